"""The UI's one query layer: what each page shows, as JSON-ready dicts. The HTML pages and the
JSON API (`/api/...`) both render these, so anything a person can see a script can fetch.

Lists, totals and threads come from the index (`proxy.ui.index`); one exchange in full comes from
the log itself.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from llmreel.core.redact import scrub_text
from llmreel.log.exchangelog import ExchangeLog
from llmreel.log.labels import Labels, Target
from llmreel.log.query import parse_when, percentile
from llmreel.providers import conversation
from llmreel.ui.index import message_dict

__all__ = [
    "ExchangeQuery",
    "QueryError",
    "curl_command",
    "exchange_detail",
    "list_exchanges",
    "list_threads",
    "thread_detail",
]

DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 500
_ITEM_COLUMNS: Final = (
    "id, time, model, provider, api, operation, cache, status, error, error_type, namespace, run,"
    " session, stream, input_tokens, output_tokens, cost_usd, duration_s, ttfc_s, thread, step"
)
_LOOKUPS: Final = ("hit", "miss", "offline_miss")
#: Request headers that carry a credential, and the placeholder "copy as curl" puts there.
_KEY_HEADERS: Final = {
    "authorization": "Bearer $API_KEY",
    "x-api-key": "$ANTHROPIC_API_KEY",
    "api-key": "$AZURE_OPENAI_API_KEY",
    "x-goog-api-key": "$GEMINI_API_KEY",
    "proxy-authorization": None,
    "cookie": None,
}
#: Headers curl sets itself, and SDK telemetry that only adds noise to a command to paste.
_SKIPPED_HEADERS: Final = frozenset({"content-length", "host", "accept-encoding", "connection",
                                     "accept", "user-agent"})  # fmt: skip


class QueryError(ValueError):
    """A filter that cannot be applied; the message says what is accepted."""


class NotFound(LookupError):
    """No such exchange or thread."""


@dataclass(frozen=True, slots=True)
class ExchangeQuery:
    """The filters of the exchanges list (the query string of `/` and `/api/exchanges`)."""

    q: str = ""
    model: str = ""
    provider: str = ""
    cache: str = ""
    errors: bool = False
    namespace: str = ""
    run: str = ""
    session: str = ""
    label: str = ""
    since: float | None = None
    until: float | None = None
    limit: int = DEFAULT_LIMIT
    before: str = ""

    @classmethod
    def parse(cls, params: Mapping[str, str], now: float | None = None) -> ExchangeQuery:
        now = time.time() if now is None else now
        text = {k: (params.get(k) or "").strip() for k in
                ("q", "model", "provider", "cache", "namespace", "run", "session", "label", "before")}  # fmt: skip
        when: dict[str, float | None] = {}
        for name in ("since", "until"):
            value = (params.get(name) or "").strip()
            try:
                when[name] = parse_when(value, now) if value else None
            except ValueError as exc:
                raise QueryError(f"{name}: {exc}") from None
        raw_limit = (params.get("limit") or "").strip()
        try:
            limit = int(raw_limit) if raw_limit else DEFAULT_LIMIT
        except ValueError:
            raise QueryError(f"limit: {raw_limit!r} is not a number (1 to {MAX_LIMIT})") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise QueryError(f"limit: give 1 to {MAX_LIMIT}")
        errors = (params.get("errors") or "").strip().lower() in ("1", "true", "yes", "on")
        return cls(errors=errors, since=when["since"], until=when["until"], limit=limit, **text)

    def params(self, **changes: Any) -> dict[str, str]:
        """The filters as query parameters (for links that keep them)."""
        out = {k: getattr(self, k) for k in
               ("q", "model", "provider", "cache", "namespace", "run", "session", "label")}  # fmt: skip
        if self.errors:
            out["errors"] = "1"
        out.update(changes)
        return {k: str(v) for k, v in out.items() if v not in ("", None)}

    def where(self) -> tuple[str, list[Any]]:
        """The SQL condition on `ex` (without `before`, which only pages)."""
        clauses: list[str] = []
        args: list[Any] = []
        if self.q:
            if len(self.q) >= 3:
                # Trigram FTS5: a phrase is a case-insensitive substring, answered from the index.
                clauses.append("ex.rowid IN (SELECT rowid FROM fts WHERE fts MATCH ?)")
                args.append('"' + self.q.replace('"', '""') + '"')
            else:
                clauses.append("ex.rowid IN (SELECT rowid FROM fts WHERE text LIKE ? ESCAPE '\\')")
                args.append("%" + _like(self.q) + "%")
        if self.model:
            clauses.append("lower(ex.model) GLOB ?")
            args.append(self.model.lower())
        for column in ("provider", "cache", "namespace", "run", "session"):
            value = getattr(self, column)
            if value:
                clauses.append(f"ex.{column} = ?")
                args.append(value)
        if self.errors:
            clauses.append("(ex.status IS NULL OR ex.status >= 400 OR ex.error IS NOT NULL)")
        if self.label:
            clauses.append(
                "(ex.id IN (SELECT id FROM labels WHERE kind = 'exchange' AND label = ?)"
                " OR ex.thread IN (SELECT id FROM labels WHERE kind = 'thread' AND label = ?))"
            )
            args += [self.label, self.label]
        if self.since is not None:
            clauses.append("ex.unix >= ?")
            args.append(self.since)
        if self.until is not None:
            clauses.append("ex.unix <= ?")
            args.append(self.until)
        return (" AND ".join(clauses) or "1"), args


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def list_exchanges(
    conn: sqlite3.Connection, query: ExchangeQuery, *, totals: bool = True
) -> dict[str, Any]:
    """`{"items": [...], "totals": {...}, "next_before": id | None}`, newest first."""
    where, args = query.where()
    page_where = where + (" AND ex.id < ?" if query.before else "")
    page_args = [*args, query.before] if query.before else args
    items = [
        _item(row)
        for row in conn.execute(
            f"SELECT {_ITEM_COLUMNS} FROM ex WHERE {page_where} ORDER BY ex.id DESC LIMIT ?",
            (*page_args, query.limit + 1),
        )
    ]
    more = len(items) > query.limit
    items = items[: query.limit]
    _attach_labels(conn, items)
    result: dict[str, Any] = {
        "items": items,
        "next_before": items[-1]["id"] if more and items else None,
    }
    if totals:
        result["totals"] = exchange_totals(conn, where, args)
    return result


def exchange_totals(conn: sqlite3.Connection, where: str, args: list[Any]) -> dict[str, Any]:
    """Requests, tokens and cost billed, cost saved, hit ratio, p50 and p95 of the duration."""
    lookups = ",".join(f"'{c}'" for c in _LOOKUPS)
    row = conn.execute(
        "SELECT count(*) AS requests,"
        " sum(status IS NULL OR status >= 400) AS errors,"
        " sum(cache = 'hit') AS hits,"
        f" sum(cache IN ({lookups})) AS lookups,"
        " sum(CASE WHEN cache NOT IN ('hit', 'offline_miss') THEN input_tokens END) AS input_tokens,"
        " sum(CASE WHEN cache NOT IN ('hit', 'offline_miss') THEN output_tokens END) AS output_tokens,"
        " sum(CASE WHEN cache NOT IN ('hit', 'offline_miss') THEN cost_usd END) AS cost_usd,"
        " sum(CASE WHEN cache = 'hit' THEN cost_usd END) AS saved_usd"
        f" FROM ex WHERE {where}",
        args,
    ).fetchone()
    durations = [
        r[0]
        for r in conn.execute(
            f"SELECT duration_s FROM ex WHERE {where} AND duration_s IS NOT NULL", args
        )
    ]
    lookups_n = row["lookups"] or 0
    return {
        "requests": row["requests"] or 0,
        "errors": row["errors"] or 0,
        "input_tokens": row["input_tokens"] or 0,
        "output_tokens": row["output_tokens"] or 0,
        "cost_usd": round(row["cost_usd"] or 0.0, 9),
        "saved_usd": round(row["saved_usd"] or 0.0, 9),
        "hit_ratio": (row["hits"] or 0) / lookups_n if lookups_n else None,
        "p50_s": percentile(durations, 50),
        "p95_s": percentile(durations, 95),
    }


def _item(row: sqlite3.Row) -> dict[str, Any]:
    item = dict(row)
    item["stream"] = bool(item["stream"])
    return item


def _attach_labels(conn: sqlite3.Connection, items: list[dict[str, Any]]) -> None:
    if not items:
        return
    ids = [i["id"] for i in items]
    marks = ",".join("?" * len(ids))
    found = {
        r["id"]: {"label": r["label"], "note": r["note"]}
        for r in conn.execute(
            f"SELECT id, label, note FROM labels WHERE kind = 'exchange' AND id IN ({marks})", ids
        )
    }
    for item in items:
        item["label"] = found.get(item["id"])


def exchange_detail(
    conn: sqlite3.Connection, exchange_log: ExchangeLog, labels: Labels, exchange_id: str
) -> dict[str, Any]:
    """The masked record of one exchange, with `conversation`, `thread`, `label` and `curl`."""
    from llmreel.log.exchangelog import AmbiguousExchange, UnknownExchange

    try:
        record = exchange_log.get(exchange_id)
    except (UnknownExchange, AmbiguousExchange) as exc:
        raise NotFound(str(exc)) from None
    conv = conversation(record)
    answer_parts = conv.response.parts if conv.response is not None else ()
    record["conversation"] = {
        "system": list(conv.system),
        "messages": [message_dict(m) for m in conv.messages],
        "tools": list(conv.tools),
        "params": conv.params,
        "response": message_dict(conv.response) if conv.response is not None else None,
        "answer": "\n".join(p.text for p in answer_parts if p.kind == "text") or None,
        "tool_calls": [
            {"id": p.call_id, "name": p.name, "arguments": p.text}
            for p in answer_parts
            if p.kind == "tool_call"
        ],
        "finish_reason": conv.finish_reason,
    }
    row = conn.execute(
        "SELECT thread, step, parent, branch, fork FROM ex WHERE id = ?", (record["id"],)
    ).fetchone()
    record["thread"] = dict(row) if row else None
    label = labels.get(Target.exchange(record["id"]))
    record["label"] = label.as_dict() if label else None
    record["curl"] = curl_command(record)
    return record


def curl_command(record: Mapping[str, Any]) -> str:
    """The request as a curl command, with a placeholder where the key was."""
    lines = [f"curl {_sh(str(record.get('url') or ''))}"]
    if (record.get("method") or "POST") != "POST":
        lines.append(f"-X {_sh(str(record.get('method')))}")
    for pair in record.get("request_headers") or []:
        if not (isinstance(pair, list) and len(pair) == 2):
            continue
        name = str(pair[0]).lower()
        if name in _SKIPPED_HEADERS or name.startswith(("llmreel-", "proxy-", "x-stainless-")):
            continue
        if name in _KEY_HEADERS:
            placeholder = _KEY_HEADERS[name]
            if placeholder is None:
                continue
            lines.append(f'-H "{pair[0]}: {placeholder}"')
            continue
        lines.append(f"-H {_sh(f'{pair[0]}: {scrub_text(str(pair[1]))}')}")
    body = record.get("request_body")
    if body is not None:
        text = body if isinstance(body, str) else orjson.dumps(body).decode()
        lines.append(f"--data-raw {_sh(scrub_text(text))}")
    return " \\\n  ".join(lines)


def _sh(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def list_threads(
    conn: sqlite3.Connection, *, limit: int = 50, run: str = "", label: str = ""
) -> dict[str, Any]:
    """`{"items": [...]}`: threads, the most recently active first."""
    clauses, args = ["1"], []
    if run:
        clauses.append("run = ?")
        args.append(run)
    if label:
        clauses.append("id IN (SELECT id FROM labels WHERE kind = 'thread' AND label = ?)")
        args.append(label)
    items = []
    for row in conn.execute(
        f"SELECT * FROM threads WHERE {' AND '.join(clauses)} ORDER BY last_id DESC LIMIT ?",
        (*args, limit),
    ):
        item = dict(row)
        item["models"] = orjson.loads(item["models"])
        item["cost_usd"] = round(item["cost_usd"], 9)
        items.append(item)
    found = {
        r["id"]: {"label": r["label"], "note": r["note"]}
        for r in conn.execute("SELECT id, label, note FROM labels WHERE kind = 'thread'")
    }
    for item in items:
        item["label"] = found.get(item["id"])
    return {"items": items}


def thread_detail(conn: sqlite3.Connection, labels: Labels, thread_id: str) -> dict[str, Any]:
    """`{"id", "steps": [...], ...}`: each step with only what is new since the call it continues."""
    head = conn.execute("SELECT * FROM threads WHERE id = ?", (thread_id,)).fetchone()
    if head is None:
        raise NotFound(f"no thread {thread_id!r}: /threads lists them")
    number: dict[str, int] = {}
    steps: list[dict[str, Any]] = []
    cumulative = 0.0
    for row in conn.execute(
        "SELECT id, time, model, cache, status, error_type, input_tokens, output_tokens, cost_usd,"
        " duration_s, ttfc_s, parent, branch, fork, steps.doc AS step_json"
        " FROM ex JOIN steps ON steps.rowid = ex.rowid WHERE thread = ? ORDER BY id",
        (thread_id,),
    ):
        number[row["id"]] = len(steps) + 1
        doc = orjson.loads(row["step_json"])
        billed = row["cache"] not in ("hit", "offline_miss")
        cumulative += (row["cost_usd"] or 0.0) if billed else 0.0
        steps.append({
            "step": len(steps) + 1,
            "exchange": row["id"],
            "time": row["time"],
            "model": row["model"],
            "new_messages": doc["new_messages"],
            "answer": doc["answer"],
            "tool_calls": doc["tool_calls"],
            "error": doc.get("error"),
            "status": row["status"],
            "input_tokens": row["input_tokens"],
            "output_tokens": row["output_tokens"],
            "cost_usd": row["cost_usd"],
            "cumulative_cost_usd": round(cumulative, 9),
            "duration_s": row["duration_s"],
            "ttfc_s": row["ttfc_s"],
            "cache": row["cache"],
            "parent": row["parent"],
            "parent_step": number.get(row["parent"] or ""),
            "branch": row["branch"],
            "fork": bool(row["fork"]),
        })  # fmt: skip
    label = labels.get(Target.thread(thread_id))
    result = dict(head)
    result["models"] = orjson.loads(result["models"])
    result["cost_usd"] = round(result["cost_usd"], 9)
    result["steps"] = steps
    result["label"] = label.as_dict() if label else None
    return result
