"""Anthropic Messages (`/v1/messages`): its response summary and usage (cache counts and compaction
steps folded into inclusive totals), and its conversation view (`system` and content blocks).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmreel.core.calls import ResponseSummary, ToolCall, Usage
from llmreel.core.jsonish import as_dict as _dict
from llmreel.core.jsonish import as_list as _list
from llmreel.core.jsonish import as_str as _str
from llmreel.providers.common import (
    Message,
    Part,
    RequestView,
    ResponseView,
    ToolAcc,
    as_count,
    assembled_response,
    error_text,
    json_or_null,
    json_text,
    media,
    summarize_object,
    tool_names,
    typed_events,
)
from llmreel.providers.sse import SSEEvent

__all__ = ["summarize_json", "summarize_stream", "view_request", "view_response"]


# --- usage ----------------------------------------------------------------------------------------


def _step_usage(u: Mapping[str, Any]) -> Usage:
    cache_write = u.get("cache_creation_input_tokens")
    if cache_write is None:
        cache_write = sum(as_count(v) for v in _dict(u.get("cache_creation")).values())
    cw = as_count(cache_write)
    cr = as_count(u.get("cache_read_input_tokens"))
    return Usage(
        input=as_count(u.get("input_tokens")) + cw + cr,
        output=as_count(u.get("output_tokens")),
        cache_read=cr,
        cache_write=cw,
    )


def _usage(u: Mapping[str, Any]) -> Usage:
    """Anthropic usage, made inclusive: input = input_tokens + cache writes + cache reads.

    Context compaction runs an extra sampling step inside one request. The response then lists
    every billed step in `usage.iterations`, while its top-level counts describe only the final
    (non-compaction) step: in `anthropic-compaction-cache-stream.sse` the top level says 181 in,
    0 cache read, 8 out, but the compaction step also read 55,096 cached tokens and wrote 83.
    Anthropic's compaction docs say to sum `iterations` for the billed total, so when it is
    present we do exactly that and ignore the top level.
    """
    iterations = [it for it in _list(u.get("iterations")) if isinstance(it, dict)]
    if iterations:
        total = Usage()
        for it in iterations:
            total = total + _step_usage(it)
        return total
    return _step_usage(u)


# --- response summary -----------------------------------------------------------------------------


def summarize_json(body: bytes) -> ResponseSummary:
    return summarize_object(body, _message)


def _message(doc: Mapping[str, Any], error: str | None) -> ResponseSummary:
    text: list[str] = []
    calls: list[ToolCall] = []
    for block in _list(doc.get("content")):
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            text.append(_str(block.get("text")) or "")
        elif kind == "tool_use":
            calls.append(
                ToolCall(
                    _str(block.get("id")),
                    _str(block.get("name")) or "",
                    json_or_null(block.get("input", {})),
                )
            )
    usage_obj = doc.get("usage")
    return ResponseSummary(
        model=_str(doc.get("model")),
        usage=_usage(usage_obj) if isinstance(usage_obj, dict) else None,
        text="".join(text),
        tool_calls=tuple(calls),
        finish_reason=_str(doc.get("stop_reason")),
        complete=True,
        error=error,
    )


def summarize_stream(events: list[SSEEvent]) -> ResponseSummary:
    model: str | None = None
    raw_usage: dict[str, Any] = {}
    text: list[str] = []
    tools: dict[int, tuple[ToolAcc, object]] = {}  # block index -> (call, initial input)
    finish: str | None = None
    complete = False
    error: str | None = None
    for kind, obj in typed_events(events):
        if kind == "content_block_delta":
            delta = _dict(obj.get("delta"))
            dkind = delta.get("type")
            if dkind == "text_delta" and isinstance(piece := delta.get("text"), str):
                text.append(piece)
            elif dkind == "input_json_delta" and isinstance(
                piece := delta.get("partial_json"), str
            ):
                entry = tools.get(as_count(obj.get("index")))
                if entry is not None:
                    entry[0].parts.append(piece)
        elif kind == "content_block_start":
            block = _dict(obj.get("content_block"))
            if block.get("type") == "text" and isinstance(piece := block.get("text"), str):
                text.append(piece)
            elif block.get("type") == "tool_use":
                acc = ToolAcc(_str(block.get("id")), _str(block.get("name")) or "")
                tools[as_count(obj.get("index"))] = (acc, block.get("input", {}))
        elif kind == "message_start":
            message = _dict(obj.get("message"))
            model = _str(message.get("model")) or model
            _overwrite(raw_usage, message.get("usage"))
        elif kind == "message_delta":
            finish = _str(_dict(obj.get("delta")).get("stop_reason")) or finish
            # message_delta usage is cumulative: overwrite the fields it carries, never add.
            _overwrite(raw_usage, obj.get("usage"))
        elif kind == "message_stop":
            complete = True
        elif kind == "error":
            error = error_text(obj)
    calls: list[ToolCall] = []
    for i in sorted(tools):
        acc, initial = tools[i]
        # The arguments arrive as input_json_delta fragments; a tool with no arguments may
        # send none at all (or only ""), in which case the start block's input is the answer.
        call = acc.done()
        calls.append(call if call.arguments else ToolCall(acc.id, acc.name, json_or_null(initial)))
    return ResponseSummary(
        model=model,
        usage=_usage(raw_usage) if raw_usage else None,
        text="".join(text),
        tool_calls=tuple(calls),
        finish_reason=finish,
        complete=complete,
        error=error,
    )


def _overwrite(target: dict[str, Any], usage: object) -> None:
    if isinstance(usage, dict):
        target.update((k, v) for k, v in usage.items() if v is not None)


# --- conversation view ----------------------------------------------------------------------------


def view_request(request: Mapping[str, Any]) -> RequestView:
    system: list[str] = []
    raw_system = request.get("system")
    if isinstance(raw_system, str) and raw_system:
        system.append(raw_system)
    elif isinstance(raw_system, list):
        text = "\n".join(p.text for p in _blocks(raw_system))
        if text:
            system.append(text)
    messages = [
        Message(_str(msg.get("role")) or "?", tuple(_blocks(msg.get("content"))))
        for msg in _list(request.get("messages"))
        if isinstance(msg, dict)
    ]
    return RequestView(system, messages, tool_names(request.get("tools")))


def _blocks(content: object) -> list[Part]:
    if isinstance(content, str):
        return [Part("text", content)]
    parts: list[Part] = []
    for block in _list(content):
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            parts.append(Part("text", _str(block.get("text")) or ""))
        elif kind in ("tool_use", "server_tool_use"):
            parts.append(Part("tool_call", json_text(block.get("input", {})),
                              name=_str(block.get("name")), call_id=_str(block.get("id"))))  # fmt: skip
        elif kind == "tool_result":
            inner = block.get("content")
            result = inner if isinstance(inner, str) else "\n".join(p.text for p in _blocks(inner))
            parts.append(Part("tool_result", result, call_id=_str(block.get("tool_use_id")),
                              is_error=block.get("is_error") is True))  # fmt: skip
        elif kind == "thinking":
            parts.append(Part("thinking", _str(block.get("thinking")) or ""))
        elif kind == "redacted_thinking":
            parts.append(Part("thinking", "(redacted)"))
        elif kind in ("image", "document"):
            source = _dict(block.get("source"))
            parts.append(media(str(kind), _str(source.get("url")) or _str(source.get("data"))
                               or _str(source.get("file_id")), _str(source.get("media_type"))))  # fmt: skip
        else:
            parts.append(Part("other", json_text(block)))
    return parts


def view_response(record: Mapping[str, Any]) -> ResponseView:
    return assembled_response(record, _thinking)


def _thinking(record: Mapping[str, Any]) -> list[Part]:
    """The thinking blocks a response showed, from its body or from its stream's deltas."""
    body = record.get("response_body")
    if isinstance(body, dict):
        return [p for p in _blocks(body.get("content")) if p.kind == "thinking"]
    parts: list[Part] = []
    if record.get("response_body_format") == "sse":
        pieces = []
        for event in _list(record.get("events")):
            delta = _dict(_dict(_dict(event).get("data")).get("delta"))
            if delta.get("type") == "thinking_delta" and isinstance(delta.get("thinking"), str):
                pieces.append(delta["thinking"])
        if pieces:
            parts.append(Part("thinking", "".join(pieces)))
    return parts
