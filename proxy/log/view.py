"""How log records look in a terminal: table cells, one-line summaries, conversations, raw HTTP.

Builds `rich.text.Text` values and plain strings; printing (and deciding between colour and
plain text) is the CLI's job. Text from the wire is never parsed as rich markup, so a prompt
containing "[bold]" or a masked key "[redacted 1a2b3c4d]" prints as it is.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any, Final

import orjson
from rich.text import Text

from llmreel.log.query import StatsRow
from llmreel.log.record import record_unix
from llmreel.providers import Message, Part, conversation

__all__ = [
    "LS_COLUMNS",
    "STATS_COLUMNS",
    "conversation_lines",
    "ls_cells",
    "raw_lines",
    "stats_cells",
    "tail_line",
]

LS_COLUMNS: Final = ("time", "id", "provider", "model", "cache", "status", "in", "out", "cost",
                     "duration")  # fmt: skip
STATS_COLUMNS: Final = ("provider", "model", "requests", "errors", "hits", "hit ratio", "in",
                        "out", "cost", "saved", "p50", "p95")  # fmt: skip
#: Columns aligned right (numbers) in the tables of `llmreel log`.
NUMERIC: Final = frozenset({"in", "out", "cost", "duration", "requests", "errors", "hits",
                            "hit ratio", "saved", "p50", "p95"})  # fmt: skip

_CACHE_STYLE: Final = {
    "hit": "green",
    "miss": "yellow",
    "refresh": "yellow",
    "bypass": "blue",
    "passthrough": "blue",
    "offline_miss": "red",
}
_ROLE_STYLE: Final = {
    "system": "bold magenta",
    "user": "bold cyan",
    "assistant": "bold green",
    "model": "bold green",
    "tool": "bold yellow",
    "function": "bold yellow",
    "input": "bold cyan",
    "request": "bold cyan",
}


# --- cells ------------------------------------------------------------------------------------


def local_time(record: Mapping[str, Any]) -> str:
    """The start time in the local zone, to the second (the JSON keeps UTC to the ms)."""
    unix = record_unix(record)
    return datetime.fromtimestamp(unix).strftime("%Y-%m-%d %H:%M:%S") if unix else "?"


def money(value: object) -> str:
    if not isinstance(value, int | float):
        return "-"
    if value == 0:
        return "$0"
    if abs(value) < 0.0001:
        return f"${value:.2e}"
    return f"${value:.6f}".rstrip("0").rstrip(".")


def seconds(value: object) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"


def count(value: object) -> str:
    return str(value) if isinstance(value, int) else "-"


def status_text(record: Mapping[str, Any]) -> str:
    status = record.get("status")
    if isinstance(status, int):
        return str(status)
    return str(record.get("error_type") or "error")


def ls_cells(record: Mapping[str, Any]) -> list[Text]:
    """The cells of one `llmreel log ls` row, styled (the style is dropped when piped)."""
    status = record.get("status")
    failed = not isinstance(status, int) or status >= 400
    cache = str(record.get("cache") or "")
    return [
        Text(local_time(record), style="dim"),
        Text(str(record.get("id") or "")),
        Text(str(record.get("provider") or "")),
        Text(str(record.get("model") or record.get("response_model") or "-")),
        Text(cache, style=_CACHE_STYLE.get(cache, "")),
        Text(status_text(record), style="bold red" if failed else "green"),
        Text(count(record.get("input_tokens"))),
        Text(count(record.get("output_tokens"))),
        Text(money(record.get("cost_usd"))),
        Text(seconds(record.get("duration_s"))),
    ]


def stats_cells(row: StatsRow) -> list[Text]:
    ratio = row.hit_ratio
    return [
        Text(row.provider),
        Text(row.model),
        Text(str(row.requests)),
        Text(str(row.errors), style="red" if row.errors else ""),
        Text(str(row.hits)),
        Text(f"{ratio:.0%}" if ratio is not None else "-"),
        Text(str(row.input_tokens)),
        Text(str(row.output_tokens)),
        Text(money(row.cost_usd)),
        Text(money(row.saved_usd), style="green" if row.saved_usd else ""),
        Text(seconds(row.p50_s)),
        Text(seconds(row.p95_s)),
    ]


# --- show -------------------------------------------------------------------------------------


def header_lines(record: Mapping[str, Any]) -> Iterator[Text]:
    model = record.get("model") or "-"
    answered = record.get("response_model")
    if answered and answered != model:
        model = f"{model} (answered by {answered})"
    yield Text.assemble(("exchange ", "bold"), (str(record.get("id")), "bold"),
                        ("  " + local_time(record), "dim"))  # fmt: skip
    yield Text(f"{record.get('method')} {record.get('url')}")
    yield Text.assemble(
        ("provider ", "dim"), f"{record.get('provider')} ({record.get('api')})",
        ("  model ", "dim"), str(model),
    )  # fmt: skip
    cache = str(record.get("cache") or "")
    yield Text.assemble(
        ("cache ", "dim"), (cache, _CACHE_STYLE.get(cache, "")),
        ("  namespace ", "dim"), str(record.get("namespace")),
        ("  key ", "dim"), str(record.get("key")),
        ("  recorded" if record.get("recorded") else "", "dim"),
    )  # fmt: skip
    status = status_text(record)
    failed = not isinstance(record.get("status"), int) or record["status"] >= 400
    yield Text.assemble(("status ", "dim"), (status, "bold red" if failed else "green"),
                        ("  stream" if record.get("stream") else "", "dim"))  # fmt: skip
    if record.get("error"):
        yield Text.assemble(("error ", "bold red"), str(record["error"]))


def conversation_lines(record: Mapping[str, Any]) -> Iterator[tuple[Text, int]]:
    """(line, indent) pairs that show an exchange as a conversation, then its accounting."""
    yield from ((line, 0) for line in header_lines(record))
    if "request_body" not in record:
        yield Text("(this record was stored without bodies)", style="dim"), 0
    conv = conversation(record)
    if conv.system:
        yield _role_heading("system"), 0
        for text in conv.system:
            yield Text(text), 2
    if conv.tools:
        yield Text.assemble(("tools ", "dim"), ", ".join(conv.tools)), 0
    if conv.params:
        params = " ".join(f"{k}={_compact(v)}" for k, v in conv.params.items())
        yield Text.assemble(("params ", "dim"), params), 0
    for message in conv.messages:
        yield from _message_lines(message)
    if conv.response is not None:
        yield _role_heading("response", str(record.get("response_model") or "")), 0
        for part in conv.response.parts:
            yield from _part_lines(part)
    yield Text(""), 0
    yield from ((line, 0) for line in accounting_lines(record, conv.finish_reason))


def _role_heading(role: str, detail: str = "") -> Text:
    style = _ROLE_STYLE.get(role, "bold")
    if role == "response":
        style = "bold green"
    return Text.assemble(("── ", "dim"), (role, style), (f"  {detail}" if detail else "", "dim"))


def _message_lines(message: Message) -> Iterator[tuple[Text, int]]:
    yield _role_heading(message.role), 0
    if not message.parts:
        yield Text("(empty)", style="dim"), 2
    for part in message.parts:
        yield from _part_lines(part)


def _part_lines(part: Part) -> Iterator[tuple[Text, int]]:
    if part.kind == "text":
        yield Text(part.text, style="red" if part.is_error else ""), 2
    elif part.kind == "thinking":
        yield Text.assemble(("thinking: ", "dim italic"), (part.text, "dim italic")), 2
    elif part.kind == "tool_call":
        call_id = f"  [{part.call_id}]" if part.call_id else ""
        yield Text.assemble(("→ call ", "yellow"), (part.name or "?", "bold yellow"),
                            (f"({part.text})", ""), (call_id, "dim")), 2  # fmt: skip
    elif part.kind == "tool_result":
        label = part.name or ""
        call_id = f"[{part.call_id}]" if part.call_id else ""
        yield Text.assemble(("← result ", "yellow"), (label, "bold yellow"), (call_id, "dim"),
                            (" (error)" if part.is_error else "", "red")), 2  # fmt: skip
        yield Text(part.text, style="red" if part.is_error else ""), 4
    elif part.kind == "media":
        yield Text(f"[{part.text}]", style="cyan"), 2
    else:
        yield Text(part.text, style="dim"), 2


def accounting_lines(record: Mapping[str, Any], finish_reason: str | None) -> Iterator[Text]:
    usage = record.get("usage")
    if isinstance(usage, dict):
        extra = ", ".join(
            f"{k.replace('_', ' ')} {usage[k]}"
            for k in ("cache_read", "cache_write", "reasoning")
            if usage.get(k)
        )
        yield Text.assemble(
            ("usage ", "dim"), f"{usage.get('input', 0)} in, {usage.get('output', 0)} out",
            f" ({extra})" if extra else "",
        )  # fmt: skip
    else:
        yield Text.assemble(("usage ", "dim"), "unknown")
    cost = money(record.get("cost_usd"))
    if record.get("cache") == "hit" and record.get("cost_usd") is not None:
        cost += " (saved: served from the cache)"
    yield Text.assemble(("cost ", "dim"), cost)
    yield Text.assemble(
        ("time ", "dim"), seconds(record.get("duration_s")),
        ("  upstream ", "dim"), seconds(record.get("upstream_s")),
        ("  first chunk ", "dim"), seconds(record.get("ttfc_s")),
    )  # fmt: skip
    finish = finish_reason or record.get("finish_reason")
    if finish:
        yield Text.assemble(("finish ", "dim"), str(finish))


def raw_lines(record: Mapping[str, Any]) -> Iterator[Text]:
    """The HTTP request and response as sent (masked headers; JSON bodies indented)."""
    yield Text(f"{record.get('method')} {record.get('url')} HTTP/1.1", style="bold")
    yield from _raw_headers(record.get("request_headers"))
    yield Text("")
    yield from _raw_body(record, "request")
    yield Text("")
    status = record.get("status")
    if isinstance(status, int):
        yield Text(f"HTTP/1.1 {status}", style="bold")
    else:
        yield Text(f"(no response: {record.get('error') or 'error'})", style="bold red")
    yield from _raw_headers(record.get("response_headers"))
    yield Text("")
    yield from _raw_body(record, "response")


def _raw_headers(headers: object) -> Iterator[Text]:
    for pair in headers if isinstance(headers, list) else []:
        if isinstance(pair, list) and len(pair) == 2:
            yield Text.assemble((f"{pair[0]}: ", "cyan"), str(pair[1]))


def _raw_body(record: Mapping[str, Any], side: str) -> Iterator[Text]:
    fmt = record.get(f"{side}_body_format")
    value = record.get(f"{side}_body")
    if fmt is None:
        if f"{side}_body" not in record:
            yield Text("(stored without bodies)", style="dim")
        return
    if fmt == "json":
        yield Text(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())
    elif fmt == "base64":
        yield Text(f"(binary, {record.get(f'{side}_body_size')} bytes, base64)", style="dim")
        yield Text(str(value))
    else:
        yield Text(str(value).rstrip("\n"))
    if record.get(f"{side}_body_truncated"):
        yield Text("(truncated)", style="dim")


# --- tail -------------------------------------------------------------------------------------


def tail_line(record: Mapping[str, Any]) -> Text:
    """One line per exchange for `llmreel log tail`."""
    cells = ls_cells(record)
    line = Text()
    for i, cell in enumerate(cells):
        if i:
            line.append("  ")
        line.append_text(cell)
    return line


def _compact(value: object) -> str:
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        return repr(value)
