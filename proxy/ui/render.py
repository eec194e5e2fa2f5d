"""How values look on the UI's pages: the template filters (money, durations, pretty JSON, long
texts) and the geometry of the two charts (the timing strip and the tokens-per-step chart). Pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final
from urllib.parse import quote

import orjson
from jinja2 import Environment

from llmreel.log.record import record_unix
from llmreel.log.view import count, seconds

__all__ = ["install", "pretty", "step_chart", "timing"]

#: Texts longer than this (characters or lines) are shown collapsed, with a preview.
LONG_CHARS: Final = 1200
LONG_LINES: Final = 18
PREVIEW_CHARS: Final = 400
CACHE_CLASS: Final = {
    "hit": "hit",
    "miss": "miss",
    "refresh": "miss",
    "bypass": "neutral",
    "passthrough": "neutral",
    "offline_miss": "bad",
}


def install(env: Environment) -> None:
    env.filters.update(
        money=usd,
        secs=seconds,
        count=count,
        tokens=tokens,
        when=when,
        pretty=pretty,
        is_long=is_long,
        preview=preview,
        cache_class=lambda v: CACHE_CLASS.get(str(v or ""), "neutral"),
        thread_url=thread_url,
        pct=lambda v: "-" if v is None else f"{v:.0%}",
        segments=segments,
    )
    env.globals.update(step_chart=step_chart, timing=timing)


def usd(value: object) -> str:
    """Dollars to the precision small calls need, without exponents: $0.000057."""
    if not isinstance(value, int | float):
        return "-"
    if value == 0:
        return "$0"
    digits = 2 if abs(value) >= 1 else 4 if abs(value) >= 0.01 else 6
    text = f"${value:.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text and abs(value) < 1 else text


def tokens(value: object) -> str:
    if not isinstance(value, int):
        return "-"
    return f"{value / 1000:.1f}k" if value >= 10_000 else str(value)


def when(value: object) -> str:
    """A record's ISO time in the local zone, to the second."""
    unix = record_unix({"time": value})
    return datetime.fromtimestamp(unix).strftime("%Y-%m-%d %H:%M:%S") if unix else "-"


def pretty(value: object) -> str:
    """JSON indented by two spaces; a string that holds JSON is parsed first."""
    if isinstance(value, str):
        text = value
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            return text
    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
    except (TypeError, orjson.JSONEncodeError):
        return repr(value)


def is_long(text: object) -> bool:
    return isinstance(text, str) and (len(text) > LONG_CHARS or text.count("\n") > LONG_LINES)


def preview(text: str) -> str:
    lines = text.splitlines()[:6]
    cut = "\n".join(lines)[:PREVIEW_CHARS]
    return cut + " …"


_FENCE: Final = re.compile(r"^```[^\n`]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def segments(text: str) -> list[tuple[str, str]]:
    """A text cut into ("text", ...) and ("code", ...) pieces at markdown code fences, so code
    keeps its formatting in a monospace block. Nothing else of markdown is interpreted: a link
    stays text, and no text ever becomes a URL or markup."""
    out: list[tuple[str, str]] = []
    at = 0
    for match in _FENCE.finditer(text):
        if match.start() > at:
            out.append(("text", text[at : match.start()].strip("\n")))
        out.append(("code", match.group(1).rstrip("\n")))
        at = match.end()
    if at < len(text):
        out.append(("text", text[at:].strip("\n")))
    return [piece for piece in out if piece[1]] or [("text", text)]


def thread_url(thread_id: object) -> str:
    return "/threads/" + quote(str(thread_id), safe=":")


def timing(record: Mapping[str, Any], width: float = 600.0) -> dict[str, Any] | None:
    """The timing strip: sent at 0, the first chunk, the last chunk, as x positions."""
    total = record.get("duration_s")
    if not isinstance(total, int | float) or total <= 0:
        return None
    first = record.get("ttfc_s")
    first = float(first) if isinstance(first, int | float) and 0 <= first <= total else None
    scale = width / total
    return {
        "width": width,
        "total": total,
        "first": first,
        "first_x": round(first * scale, 1) if first is not None else None,
        "upstream": record.get("upstream_s"),
    }


def step_chart(steps: Sequence[Mapping[str, Any]], height: float = 120.0) -> dict[str, Any]:
    """Bars of context (input) tokens per step, coloured by cache outcome, and the cumulative
    cost as a line; coordinates in a `width` x `height` box."""
    bar = 10.0
    # Up to 40 steps, each bar keeps a fortieth of the width; longer runs fill it.
    width = bar * max(40, len(steps))
    most = max((s.get("input_tokens") or 0 for s in steps), default=0) or 1
    cost = max((s.get("cumulative_cost_usd") or 0.0 for s in steps), default=0.0) or 1.0
    bars = []
    points = []
    for i, step in enumerate(steps):
        h = round((step.get("input_tokens") or 0) / most * (height - 4), 1)
        x = round(i * bar, 1)
        bars.append({"x": x, "y": round(height - h, 1), "w": max(1.0, bar - 1), "h": h,
                     "cls": CACHE_CLASS.get(str(step.get("cache") or ""), "neutral"),
                     "step": step.get("step"),
                     "title": f"step {step.get('step')}: {step.get('input_tokens') or 0} context tokens, "
                              f"{step.get('cache')}, {seconds(step.get('duration_s'))}"})  # fmt: skip
        y = height - (step.get("cumulative_cost_usd") or 0.0) / cost * (height - 4)
        points.append(f"{x + bar / 2:.1f},{y:.1f}")
    return {"width": width, "height": height, "bars": bars, "line": " ".join(points),
            "max_tokens": most, "max_cost": cost}  # fmt: skip
