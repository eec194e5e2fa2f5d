"""Finding exchanges in the log: time and duration parsing, filters, full-text search, statistics.

Pure functions over log records (the dicts of `proxy.log.record`); no I/O.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from llmreel.core.timeparse import parse_duration
from llmreel.log.record import record_unix

__all__ = [
    "LogFilter",
    "StatsRow",
    "parse_duration",
    "parse_when",
    "percentile",
    "searchable_text",
    "stats",
]

_STATUS_CLASS: Final = re.compile(r"^[1-5]xx$", re.IGNORECASE)


def parse_when(text: str, now: float) -> float:
    """Unix time of a relative age ("10m" ago) or an ISO-8601 date or datetime.

    A datetime without an offset is local time, as a person typing it means.
    """
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    value = text.strip()
    if value.endswith(("z", "Z")):
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an age (10m, 2h, 7d) nor an ISO date or time "
            "(2025-06-01, 2025-06-01T14:30, 2025-06-01T14:30:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # local time
    return moment.timestamp()


@dataclass(frozen=True, slots=True)
class LogFilter:
    """Which records to keep. Empty tuples and None mean "any".

    `statuses` holds "200", "4xx" or "error" (no response, or a status >= 400). `models`
    holds exact names or shell patterns ("gpt-4o*"), matched against the requested and the
    responding model, case-insensitively. `grep` is a case-insensitive substring of the prompts
    and responses; it needs the full record, everything else reads only the head.
    """

    since: float | None = None
    until: float | None = None
    models: tuple[str, ...] = ()
    providers: tuple[str, ...] = ()
    caches: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    runs: tuple[str, ...] = ()
    sessions: tuple[str, ...] = ()
    #: Only these exchange ids (e.g. those with a label); None: any.
    ids: frozenset[str] | None = None
    grep: str | None = None
    _grep_folded: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for status in self.statuses:
            if not (status.isdigit() or _STATUS_CLASS.match(status) or status == "error"):
                raise ValueError(f"status {status!r}: use a code (200), a class (4xx) or error")
        folded = (self.grep or "").casefold()
        object.__setattr__(self, "_grep_folded", folded)

    @property
    def needs_content(self) -> bool:
        return bool(self.grep)

    def matches_head(self, record: Mapping[str, Any]) -> bool:
        """Every condition but `grep`, on a record's head."""
        if self.since is not None or self.until is not None:
            started = record_unix(record)
            if self.since is not None and started < self.since:
                return False
            if self.until is not None and started > self.until:
                return False
        if self.providers and _lower(record.get("provider")) not in _folded(self.providers):
            return False
        if self.caches and _lower(record.get("cache")) not in _folded(self.caches):
            return False
        if self.namespaces and record.get("namespace") not in self.namespaces:
            return False
        if self.runs and record.get("run") not in self.runs:
            return False
        if self.sessions and record.get("session") not in self.sessions:
            return False
        if self.ids is not None and record.get("id") not in self.ids:
            return False
        if self.models and not self._model_matches(record):
            return False
        return not self.statuses or any(_status_matches(s, record) for s in self.statuses)

    def matches_content(self, record: Mapping[str, Any]) -> bool:
        """The `grep` condition, on a full record."""
        if not self._grep_folded:
            return True
        return self._grep_folded in searchable_text(record).casefold()

    def _model_matches(self, record: Mapping[str, Any]) -> bool:
        names = [_lower(record.get("model")), _lower(record.get("response_model"))]
        return any(
            fnmatch.fnmatchcase(name, pattern)
            for pattern in _folded(self.models)
            for name in names
            if name
        )


def _lower(value: object) -> str:
    return value.lower() if isinstance(value, str) else ""


def _folded(values: Iterable[str]) -> set[str]:
    return {v.lower() for v in values}


def _status_matches(wanted: str, record: Mapping[str, Any]) -> bool:
    status = record.get("status")
    if wanted == "error":
        return not isinstance(status, int) or status >= 400 or bool(record.get("error"))
    if not isinstance(status, int):
        return False
    if wanted.isdigit():
        return status == int(wanted)
    return str(status)[:1] == wanted[:1]


def searchable_text(record: Mapping[str, Any]) -> str:
    """The prompts and responses of a record as one string, for `--grep`.

    String values only (not JSON keys or syntax), so "role" does not match every chat.
    A streamed response counts through its assembled text and tool calls.
    """
    pieces: list[str] = []
    _strings(record.get("request_body"), pieces)
    if record.get("response_body_format") != "sse":
        _strings(record.get("response_body"), pieces)
    _strings(record.get("assembled"), pieces)
    if isinstance(record.get("error"), str):
        pieces.append(record["error"])
    return "\n".join(pieces)


def _strings(value: object, out: list[str]) -> None:
    # Iterative: bodies come from the wire and may nest deeper than Python's recursion limit.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))


# --------------------------------------------------------------------------------------------
# Statistics


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (0 < q <= 100): the smallest value >= q% of the values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(slots=True)
class StatsRow:
    """Totals for one provider and model (or for everything, with both set to "*").

    Tokens and cost are what was billed upstream (hits and offline misses cost nothing).
    `saved_usd` is what the hits would have cost. `hit_ratio` is hits over the requests that
    looked in the cache (hit, miss, offline_miss); None when none did. Latency is the duration
    as the client saw it, hits included.
    """

    provider: str
    model: str
    requests: int = 0
    errors: int = 0
    hits: int = 0
    lookups: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    saved_usd: float = 0.0
    durations: list[float] = field(default_factory=list, repr=False)

    def add(self, record: Mapping[str, Any]) -> None:
        self.requests += 1
        cache = record.get("cache")
        status = record.get("status")
        if not isinstance(status, int) or status >= 400:
            self.errors += 1
        if cache in ("hit", "miss", "offline_miss"):
            self.lookups += 1
        cost = record.get("cost_usd")
        cost = float(cost) if isinstance(cost, int | float) else 0.0
        if cache == "hit":
            self.hits += 1
            self.saved_usd += cost
        elif cache != "offline_miss":
            self.input_tokens += _count(record.get("input_tokens"))
            self.output_tokens += _count(record.get("output_tokens"))
            self.cost_usd += cost
        duration = record.get("duration_s")
        if isinstance(duration, int | float):
            self.durations.append(float(duration))

    @property
    def hit_ratio(self) -> float | None:
        return self.hits / self.lookups if self.lookups else None

    @property
    def p50_s(self) -> float | None:
        return percentile(self.durations, 50)

    @property
    def p95_s(self) -> float | None:
        return percentile(self.durations, 95)

    def as_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "requests": self.requests,
            "errors": self.errors,
            "hits": self.hits,
            "hit_ratio": self.hit_ratio,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": round(self.cost_usd, 9),
            "saved_usd": round(self.saved_usd, 9),
            "p50_s": self.p50_s,
            "p95_s": self.p95_s,
        }


def _count(value: object) -> int:
    return value if isinstance(value, int) else 0


def stats(records: Iterable[Mapping[str, Any]]) -> tuple[list[StatsRow], StatsRow]:
    """Rows by (provider, model), sorted by cost then requests, and the grand total."""
    rows: dict[tuple[str, str], StatsRow] = {}
    total = StatsRow("*", "*")
    for record in records:
        provider = str(record.get("provider") or "?")
        model = str(record.get("model") or record.get("response_model") or "?")
        row = rows.get((provider, model))
        if row is None:
            row = rows[(provider, model)] = StatsRow(provider, model)
        row.add(record)
        total.add(record)
    ordered = sorted(rows.values(), key=lambda r: (-r.cost_usd, -r.requests, r.provider, r.model))
    return ordered, total
