"""One exchange as an OpenTelemetry GenAI span: its name, attributes, content and trace group.

Pure: no I/O and no OpenTelemetry import. `llmreel.metering.otel` turns what these functions
return into spans. The attribute names follow the GenAI semantic conventions (client inference
spans): https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/ .

Grouping: the spans of one thread or run share a trace. On the hot path llmreel knows two
groupings for free, and picks the first one an exchange has:

1. its session (the `llmreel-session` header, or the session of its control API context): a
   thread as the client itself names it;
2. its run (`llmreel run`, the pytest plugin, `--run-id`): everything one agent run did.

The trace id and the group's root span id are derived from the group ("session:ID" or "run:ID",
SHA-256), so every proxy that sees the group, now or later, puts its spans in the same trace
under the same parent. An exchange in neither group is a trace of its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import orjson

from llmreel.core.redact import scrub_text
from llmreel.log.record import exchange_record
from llmreel.providers import Message, Part, conversation, summarize

if TYPE_CHECKING:
    from llmreel.core.exchange import Exchange
    from llmreel.providers import ResponseSummary

__all__ = [
    "DEFAULT_CONTENT_LIMIT",
    "Group",
    "attributes",
    "content_attributes",
    "group_attributes",
    "group_of",
    "is_error",
    "span_name",
    "summary_of",
]

#: Characters of message JSON per attribute (gen_ai.input.messages, ...): a receiver's limits
#: (Tempo, Jaeger) are far above this, and a span must stay small enough to batch.
DEFAULT_CONTENT_LIMIT: Final = 64 * 1024
_TRUNCATED: Final = "…[truncated by llmreel]"

Attributes = dict[str, str | bool | int | float | Sequence[str]]


@dataclass(frozen=True, slots=True)
class Group:
    """The spans of one session or run: one trace, under one root span."""

    kind: str
    """"session" or "run"."""
    id: str
    trace_id: int
    """128-bit trace id, derived from kind and id."""
    span_id: int
    """64-bit id of the group's root span, derived likewise."""


def group_of(ex: Exchange) -> Group | None:
    """The trace group of `ex`: its session, else its run, else None (a trace of its own)."""
    if ex.session:
        return _group("session", ex.session)
    if ex.run:
        return _group("run", ex.run)
    return None


def _group(kind: str, ident: str) -> Group:
    digest = hashlib.sha256(f"{kind}:{ident}".encode("utf-8", "surrogateescape")).digest()
    trace_id = int.from_bytes(digest[:16], "big") or 1  # zero ids are invalid
    span_id = int.from_bytes(digest[16:24], "big") or 1
    return Group(kind, ident, trace_id, span_id)


def span_name(ex: Exchange) -> str:
    """`{gen_ai.operation.name} {gen_ai.request.model}`, as the conventions name spans."""
    model = ex.model or ex.response_model
    return f"{ex.endpoint.operation} {model}" if model else ex.endpoint.operation


def attributes(ex: Exchange, summary: ResponseSummary | None) -> Attributes:
    """The span attributes of `ex` (no content). `summary` gives the finish reason."""
    ep = ex.endpoint
    attrs: Attributes = {
        "gen_ai.operation.name": ep.operation,
        "gen_ai.provider.name": ep.otel_provider,
        # The attribute gen_ai.provider.name replaced (semantic conventions before 1.37), for
        # receivers that still read it.
        "gen_ai.system": ep.otel_provider,
        "llmreel.cache": ex.cache,
        "llmreel.namespace": ex.namespace,
        "llmreel.provider": ep.provider,
        "llmreel.api": ep.api,
        "llmreel.exchange_id": ex.id,
        "llmreel.recorded": ex.recorded,
        "http.request.method": ex.method,
        # Phoenix (OpenInference) files spans by this; other receivers ignore it.
        "openinference.span.kind": "EMBEDDING" if ep.operation == "embeddings" else "LLM",
    }
    if ex.model:
        attrs["gen_ai.request.model"] = ex.model
    if ex.response_model:
        attrs["gen_ai.response.model"] = ex.response_model
    usage = ex.usage
    if usage is not None:
        attrs["gen_ai.usage.input_tokens"] = usage.input
        attrs["gen_ai.usage.output_tokens"] = usage.output
        if usage.cache_read:
            attrs["gen_ai.usage.cache_read.input_tokens"] = usage.cache_read
        if usage.cache_write:
            attrs["gen_ai.usage.cache_creation.input_tokens"] = usage.cache_write
    if ex.cost_usd is not None:
        attrs["llmreel.cost_usd"] = ex.cost_usd
    if summary is not None and summary.finish_reason:
        attrs["gen_ai.response.finish_reasons"] = [summary.finish_reason]
    if ex.stream:
        attrs["gen_ai.request.stream"] = True
    host, port, scheme = _server(ex.url)
    if host:
        attrs["server.address"] = host
        attrs["server.port"] = port or (443 if scheme == "https" else 80)
    if ex.status is not None:
        attrs["http.response.status_code"] = ex.status
    if ex.error_type is not None:
        attrs["error.type"] = ex.error_type
    if ex.session:
        # The conventions' name for a thread, and the one Phoenix and Langfuse group sessions by.
        attrs["gen_ai.conversation.id"] = ex.session
        attrs["session.id"] = ex.session
    if ex.run:
        attrs["llmreel.run"] = ex.run
    if ex.ttfc_s is not None:
        attrs["llmreel.ttfc_s"] = ex.ttfc_s
    return attrs


def is_error(ex: Exchange) -> bool:
    """Whether the span's status is ERROR: no response, an error status, or a named failure."""
    return ex.status is None or ex.status >= 400 or ex.error_type is not None


def error_description(ex: Exchange) -> str:
    return scrub_text(ex.error or "")[:500] or (ex.error_type or "")


def group_attributes(group: Group, exchanges: int) -> Attributes:
    """Attributes of a group's root span."""
    attrs: Attributes = {
        f"llmreel.{group.kind}": group.id,
        "llmreel.exchanges": exchanges,
        "openinference.span.kind": "CHAIN",
    }
    if group.kind == "session":
        attrs["gen_ai.conversation.id"] = group.id
        attrs["session.id"] = group.id
    return attrs


def content_attributes(ex: Exchange, limit: int = DEFAULT_CONTENT_LIMIT) -> Attributes:
    """The conversation of `ex` as the conventions' `gen_ai.system_instructions`,
    `gen_ai.input.messages` and `gen_ai.output.messages` (JSON text), masked like the log,
    each at most `limit` characters."""
    record = exchange_record(ex, bodies=True)  # masks keys, as the log does
    conv = conversation(record)
    attrs: Attributes = {}
    if conv.system:
        attrs["gen_ai.system_instructions"] = _bounded_json(
            [{"type": "text", "content": text} for text in conv.system], limit
        )
    if conv.messages:
        attrs["gen_ai.input.messages"] = _bounded_json([_message(m) for m in conv.messages], limit)
    if conv.response is not None:
        out = {**_message(conv.response), "finish_reason": conv.finish_reason or ""}
        attrs["gen_ai.output.messages"] = _bounded_json([out], limit)
    return attrs


def summary_of(ex: Exchange) -> ResponseSummary | None:
    """The response summary of `ex`, read from its body when the engine had none (replays)."""
    if ex.summary is not None or not ex.response_body:
        return ex.summary
    return summarize(ex.endpoint, ex.response_body, _content_type(ex.response_headers))


def _content_type(headers: Iterable[tuple[str, str]]) -> str:
    return next((v for k, v in headers if k.lower() == "content-type"), "")


def _message(message: Message) -> dict[str, Any]:
    role = "assistant" if message.role == "model" else message.role
    return {"role": role, "parts": [_part(p) for p in message.parts]}


def _part(part: Part) -> dict[str, Any]:
    if part.kind == "text":
        return {"type": "text", "content": part.text}
    if part.kind == "thinking":
        return {"type": "reasoning", "content": part.text}
    if part.kind == "tool_call":
        return {"type": "tool_call", "id": part.call_id, "name": part.name or "",
                "arguments": _json_or_text(part.text)}  # fmt: skip
    if part.kind == "tool_result":
        return {"type": "tool_call_response", "id": part.call_id, "response": part.text}
    # media (described, never its bytes) and anything else: a generic part.
    return {"type": part.kind, "content": part.text}


def _json_or_text(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _bounded_json(items: list[Any], limit: int) -> str:
    """`items` as JSON of at most `limit` characters: the newest messages are kept whole as
    long as they fit; the first that does not fit has its texts cut; older ones are left out."""
    text = orjson.dumps(items).decode()
    if len(text) <= limit:
        return text
    kept: list[Any] = []
    used = 2
    for item in reversed(items):
        size = len(orjson.dumps(item)) + 1
        if used + size > limit:
            room = max(limit - used - 200, 0)
            kept.append(_cut(item, room))
            break
        kept.append(item)
        used += size
    kept.reverse()
    text = orjson.dumps(kept).decode()
    return (
        text
        if len(text) <= limit
        else orjson.dumps([{"type": "text", "content": _TRUNCATED}]).decode()
    )


def _cut(item: Any, room: int) -> Any:
    """`item` with every string past `room` characters (in total) cut off."""
    budget = [room]

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            keep = value[: max(budget[0], 0)]
            budget[0] -= len(keep)
            return keep + _TRUNCATED if len(keep) < len(value) else keep
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(item)


def _server(url: str) -> tuple[str, int | None, str]:
    try:
        parts = urlsplit(url)
        return parts.hostname or "", parts.port, parts.scheme
    except ValueError:
        return "", None, ""
