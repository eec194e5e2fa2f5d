"""The exchange log's record: one JSON-ready dict per exchange, its fields and how they are made.

Pure functions, no I/O. `exchange_record` is the single definition of the log format: the store
(`proxy.log.packing`), the JSONL sink, `llmreel log ls --json` and the exports all use its field
names. Every string that comes from the wire goes through `scrub_text`, so a key pasted into a
prompt or echoed in an error is masked like the ones in headers.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import orjson

from llmreel.core.redact import scrub_text
from llmreel.core.wire import header, is_event_stream
from llmreel.providers import Endpoint, ResponseSummary, summarize
from llmreel.providers.sse import looks_like_sse, parse_sse

if TYPE_CHECKING:
    from llmreel.core.exchange import Exchange

__all__ = [
    "HEAVY_FIELDS",
    "MAX_BODY_BYTES",
    "RECORD_VERSION",
    "exchange_head",
    "exchange_record",
    "format_time",
    "record_content",
    "record_unix",
    "strip_bodies",
]

#: Bump when a field changes meaning or disappears; adding a field does not need a bump.
RECORD_VERSION: Final = 1

#: A body longer than this is kept truncated (`*_body_truncated: true`): a log is for reading, and
#: a multi-hundred-MB upload must not stall the proxy's event loop while it is serialised.
MAX_BODY_BYTES: Final = 32 << 20

#: Fields that are large or carry content; kept out of the record's cheap-to-read head.
HEAVY_FIELDS: Final = (
    "request_headers",
    "response_headers",
    "request_body",
    "response_body",
    "events",
    "assembled",
)
_BODY_FIELDS: Final = ("request_body", "response_body", "events", "assembled")


def exchange_record(ex: Exchange, *, bodies: bool = True) -> dict[str, Any]:
    """The log record of `ex`: a JSON-ready dict with stable field names (see docs/log.md).

    With `bodies=False` the request and response content (bodies, SSE events, assembled answer)
    is left out, for logs that must not hold prompts. Never raises on odd bodies: invalid UTF-8
    becomes base64 (scrubbed first), non-JSON becomes text, huge bodies are truncated.
    """
    summary = ex.summary
    if summary is None and ex.response_body:
        # Replays and llmreel's own answers come without a summary; the log wants the
        # assembled answer for every exchange, so read the body here (pure, never raises).
        response_type = header(ex.response_headers, "content-type") or ""
        summary = summarize(ex.endpoint, ex.response_body, response_type)
    record = exchange_head(ex, summary)
    record["request_headers"] = _headers(ex.request_headers)
    record["response_headers"] = _headers(ex.response_headers)
    if not bodies:
        return record
    record.update(record_content(ex.endpoint, ex.request_body, ex.response_body,
                                 record["request_headers"], record["response_headers"], summary))  # fmt: skip
    return record


def exchange_head(ex: Exchange, summary: ResponseSummary | None = None) -> dict[str, Any]:
    """The cheap part of a record: every field but `HEAVY_FIELDS` (no body is parsed)."""
    usage = ex.usage.as_dict() if ex.usage is not None else None
    if summary is None:
        summary = ex.summary
    record: dict[str, Any] = {
        "v": RECORD_VERSION,
        "id": ex.id,
        "time": format_time(ex.started),
        "method": ex.method,
        "url": scrub_text(ex.url),
        "status": ex.status,
        "provider": ex.endpoint.provider,
        "api": ex.endpoint.api,
        "operation": ex.endpoint.operation,
        "model": ex.model,
        "response_model": ex.response_model,
        "cache": ex.cache,
        "key": ex.key,
        "namespace": ex.namespace,
        "recorded": ex.recorded,
        "stream": ex.stream,
        "input_tokens": usage["input"] if usage else None,
        "output_tokens": usage["output"] if usage else None,
        "usage": usage,
        "cost_usd": ex.cost_usd,
        "duration_s": _round(ex.duration_s),
        "upstream_s": _round(ex.upstream_s),
        "ttfc_s": _round(ex.ttfc_s),
        "finish_reason": summary.finish_reason if summary is not None else None,
        "error": scrub_text(ex.error) if ex.error is not None else None,
        "error_type": ex.error_type,
        "explanation": scrub_text(ex.explanation) or None,
        "client": ex.client,
        "listener": ex.listener,
        "request_body_size": len(ex.request_body),
        "response_body_size": len(ex.response_body),
    }
    # Set only when known, so records of calls without them keep their earlier form.
    if ex.session:
        record["session"] = ex.session
    if ex.run:
        record["run"] = ex.run
    return record


def record_content(
    endpoint: Endpoint,
    request_body: bytes,
    response_body: bytes,
    request_headers: list[list[str]],
    response_headers: list[list[str]],
    summary: ResponseSummary | None,
) -> dict[str, Any]:
    """The body fields of a record: decoded bodies, SSE events and the assembled answer.

    `summary` is read from `response_body` when not given.
    """
    response_type = header(response_headers, "content-type") or ""
    if summary is None and response_body:
        summary = summarize(endpoint, response_body, response_type)
    request_type = header(request_headers, "content-type") or ""
    req_value, req_fmt, req_truncated, _ = _body(request_body, request_type, sse=False)
    value, fmt, truncated, events = _body(response_body, response_type, sse=True)
    return {
        "request_body": req_value,
        "request_body_format": req_fmt,
        "request_body_truncated": req_truncated,
        "response_body": value,
        "response_body_format": fmt,
        "response_body_truncated": truncated,
        "events": events,
        "assembled": _assembled(summary),
    }


def format_time(unix: float) -> str:
    """ISO-8601 in UTC with milliseconds: 2025-06-01T12:00:00.123Z."""
    try:
        moment = datetime.fromtimestamp(unix, UTC)
    except (OverflowError, OSError, ValueError):
        moment = datetime.fromtimestamp(0, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def record_unix(record: Mapping[str, Any]) -> float:
    """The start time of a record (its `time`, see `format_time`) as Unix seconds; 0 if unreadable."""
    value = record.get("time")
    if not isinstance(value, str):
        return 0.0
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _headers(headers: Iterable[tuple[str, str]]) -> list[list[str]]:
    # The producer masked them already; scrubbing again is cheap and idempotent, and makes the
    # promise "no key in the log" independent of every producer getting it right.
    return [[name, scrub_text(value)] for name, value in headers]


def _body(
    raw: bytes, content_type: str, *, sse: bool
) -> tuple[Any, str | None, bool, list[dict[str, Any]] | None]:
    """(value, format, truncated, events) of a body.

    format is "json" (value is the parsed document), "sse" (value is the event text, events its
    parsed events), "text", "base64" (binary, after its key-shaped runs were masked), or None
    for an empty body.
    """
    if not raw:
        return None, None, False, None
    truncated = len(raw) > MAX_BODY_BYTES
    chunk = raw[:MAX_BODY_BYTES] if truncated else raw
    text = _utf8(chunk, truncated)
    if text is None:
        # Binary: latin-1 maps bytes to code points one to one, so ASCII key shapes are found
        # and masked without touching any other byte.
        scrubbed = scrub_text(chunk.decode("latin-1")).encode("latin-1", "replace")
        return base64.b64encode(scrubbed).decode("ascii"), "base64", truncated, None
    text = scrub_text(text)
    stripped = text.lstrip()
    if not truncated and stripped[:1] in ("{", "["):
        try:
            return orjson.loads(text), "json", False, None
        except orjson.JSONDecodeError:
            pass
    if sse and (is_event_stream(content_type) or looks_like_sse(chunk)):
        return text, "sse", truncated, _events(text)
    return text, "text", truncated, None


def _utf8(chunk: bytes, truncated: bool) -> str | None:
    # A truncated body may end inside a multi-byte character: drop up to 3 trailing bytes.
    for cut in range(4 if truncated else 1):
        try:
            return (chunk[: len(chunk) - cut] if cut else chunk).decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


def _events(text: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for event in parse_sse(text.encode("utf-8", "surrogatepass")):
        data: Any = event.data
        if data[:1] in ("{", "["):
            try:
                data = orjson.loads(data)
            except orjson.JSONDecodeError:
                pass
        events.append({"event": event.event, "data": data})
    return events


def _assembled(summary: ResponseSummary | None) -> dict[str, Any] | None:
    if summary is None:
        return None
    return {
        "text": scrub_text(summary.text),
        "tool_calls": [
            {"id": call.id, "name": call.name, "arguments": scrub_text(call.arguments)}
            for call in summary.tool_calls
        ],
        "finish_reason": summary.finish_reason,
        "complete": summary.complete,
        "error": scrub_text(summary.error) if summary.error else None,
    }


def strip_bodies(record: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `record` without content (what `exchange_record(bodies=False)` leaves out)."""
    return {k: v for k, v in record.items() if not _is_content(k)}


def _is_content(field: str) -> bool:
    if field in _BODY_FIELDS:
        return True
    # request_body_format and friends describe content that is absent; the sizes stay.
    return field.startswith(("request_body_", "response_body_")) and not field.endswith("_size")
