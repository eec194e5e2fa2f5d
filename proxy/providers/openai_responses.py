"""OpenAI Responses (`/responses`): its response summary (a response object, or a stream of typed
events ending in `response.completed`) and its conversation view (`instructions` and `input` items).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from llmreel.core.calls import ResponseSummary, ToolCall
from llmreel.core.jsonish import as_dict as _dict
from llmreel.core.jsonish import as_list as _list
from llmreel.core.jsonish import as_str as _str
from llmreel.providers.common import (
    Message,
    Part,
    RequestView,
    ResponseView,
    ToolAcc,
    arguments,
    as_count,
    assembled_response,
    error_text,
    json_text,
    summarize_object,
    text_of,
    tool_names,
    typed_events,
)
from llmreel.providers.openai_chat import content_parts, openai_usage
from llmreel.providers.sse import SSEEvent

__all__ = ["summarize_json", "summarize_stream", "view_request", "view_response"]


# --- response summary -----------------------------------------------------------------------------


def summarize_json(body: bytes) -> ResponseSummary:
    return summarize_object(body, _complete_object)


def _complete_object(resp: Mapping[str, Any], error: str | None) -> ResponseSummary:
    return _summarize_object(resp, error, complete=True)


def _summarize_object(
    resp: Mapping[str, Any], error: str | None, *, complete: bool
) -> ResponseSummary:
    usage_obj = resp.get("usage")
    text, calls = _output(resp.get("output"))
    return ResponseSummary(
        model=_str(resp.get("model")),
        usage=openai_usage(usage_obj) if isinstance(usage_obj, dict) else None,
        text=text,
        tool_calls=tuple(calls),
        finish_reason=_finish(resp),
        complete=complete,
        error=error,
    )


def _output(output: object) -> tuple[str, list[ToolCall]]:
    text: list[str] = []
    calls: list[ToolCall] = []
    for item in _list(output):
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "message":
            for part in _list(item.get("content")):
                if isinstance(part, dict) and part.get("type") == "output_text":
                    text.append(_str(part.get("text")) or "")
        elif kind == "function_call":
            calls.append(_call(item).done())
    return "".join(text), calls


def _call(item: Mapping[str, Any]) -> ToolAcc:
    args = item.get("arguments")
    return ToolAcc(
        _str(item.get("call_id")) or _str(item.get("id")),
        _str(item.get("name")) or "",
        [args] if isinstance(args, str) and args else [],
    )


def _finish(resp: Mapping[str, Any]) -> str | None:
    # Responses has no finish_reason: an incomplete response says why, otherwise its status.
    reason = _str(_dict(resp.get("incomplete_details")).get("reason"))
    return reason or _str(resp.get("status"))


_TERMINAL: Final = frozenset({"response.completed", "response.incomplete", "response.failed"})


def summarize_stream(events: list[SSEEvent]) -> ResponseSummary:
    model: str | None = None
    text: list[str] = []
    calls: dict[int, ToolAcc] = {}
    final: dict[str, Any] | None = None
    error: str | None = None
    for kind, obj in typed_events(events):
        if kind == "response.output_text.delta":
            if isinstance(delta := obj.get("delta"), str):
                text.append(delta)
        elif kind == "response.function_call_arguments.delta":
            acc = calls.get(as_count(obj.get("output_index")))
            if acc is not None and isinstance(delta := obj.get("delta"), str):
                acc.parts.append(delta)
        elif kind in ("response.output_item.added", "response.output_item.done"):
            # .done carries the finished item, so it replaces whatever the deltas built.
            item = _dict(obj.get("item"))
            if item.get("type") == "function_call":
                calls[as_count(obj.get("output_index"))] = _call(item)
        elif kind in ("response.created", "response.in_progress"):
            model = _str(_dict(obj.get("response")).get("model")) or model
        elif kind in _TERMINAL:
            final = _dict(obj.get("response"))
            if kind == "response.failed":
                err = final.get("error")
                error = error_text({"error": err}) if isinstance(err, dict) else "response.failed"
        elif kind == "error":
            error = error_text(obj)
    if final is None:
        return ResponseSummary(
            model,
            None,
            "".join(text),
            tuple(calls[i].done() for i in sorted(calls)),
            None,
            False,
            error,
        )
    summary = _summarize_object(final, error, complete=True)
    # The deltas are what the client saw; the final object is the fallback for servers that
    # send no deltas.
    streamed_text = "".join(text)
    streamed_calls = tuple(calls[i].done() for i in sorted(calls))
    return ResponseSummary(
        model=summary.model or model,
        usage=summary.usage,
        text=streamed_text or summary.text,
        tool_calls=streamed_calls or summary.tool_calls,
        finish_reason=summary.finish_reason,
        complete=True,
        error=error,
    )


# --- conversation view ----------------------------------------------------------------------------


def view_request(request: Mapping[str, Any]) -> RequestView:
    system: list[str] = []
    if isinstance(instructions := request.get("instructions"), str) and instructions:
        system.append(instructions)
    messages: list[Message] = []
    value = request.get("input")
    if isinstance(value, str):
        messages.append(Message("user", (Part("text", value),)))
    for item in _list(value):
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        role = _str(item.get("role"))
        if role is not None and kind in (None, "message"):
            parts = content_parts(item.get("content"))
            if role in ("system", "developer"):
                text = "\n".join(p.text for p in parts)
                system.append(text if role == "system" else f"(developer) {text}")
            else:
                messages.append(Message(role, tuple(parts)))
        elif kind in ("function_call", "custom_tool_call"):
            args = item.get("arguments", item.get("input"))
            part = Part("tool_call", arguments(args), name=_str(item.get("name")),
                        call_id=_str(item.get("call_id")) or _str(item.get("id")))  # fmt: skip
            _append_part(messages, "assistant", part)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            part = Part(
                "tool_result", text_of(item.get("output")), call_id=_str(item.get("call_id"))
            )
            _append_part(messages, "tool", part)
        elif kind == "reasoning":
            summary = "\n".join(
                _str(s.get("text")) or "" for s in _list(item.get("summary")) if isinstance(s, dict)
            )
            _append_part(messages, "assistant", Part("thinking", summary or "(reasoning)"))
        else:
            _append_part(messages, "assistant", Part("other", json_text(item)))
    return RequestView(system, messages, tool_names(request.get("tools")))


def _append_part(messages: list[Message], role: str, part: Part) -> None:
    # Consecutive items of one role (several function calls in a row) read as one turn.
    if messages and messages[-1].role == role:
        messages[-1] = Message(role, (*messages[-1].parts, part))
    else:
        messages.append(Message(role, (part,)))


def view_response(record: Mapping[str, Any]) -> ResponseView:
    return assembled_response(record, _reasoning)


def _reasoning(record: Mapping[str, Any]) -> list[Part]:
    """The reasoning summaries a non-streamed response showed."""
    body = record.get("response_body")
    parts: list[Part] = []
    if isinstance(body, dict):
        for item in _list(body.get("output")):
            if isinstance(item, dict) and item.get("type") == "reasoning":
                summary = [
                    _str(s.get("text")) for s in _list(item.get("summary")) if isinstance(s, dict)
                ]
                if text := "\n".join(s for s in summary if s):
                    parts.append(Part("thinking", text))
    return parts
