"""OpenAI Chat Completions (`/chat/completions`), also spoken by most OpenAI-compatible servers:
its response summary and usage, and its conversation view.

The usage and content-part readers here serve the other OpenAI wire APIs too.
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
    ToolAcc,
    arguments,
    as_count,
    assembled_response,
    body_error,
    error_text,
    first_choice,
    json_or_null,
    json_text,
    loads,
    media,
    summarize_object,
)
from llmreel.providers.sse import SSEEvent

__all__ = [
    "content_parts",
    "openai_usage",
    "summarize_doc",
    "summarize_json",
    "summarize_stream",
    "view_request",
    "view_response",
]


# --- usage ----------------------------------------------------------------------------------------


def openai_usage(u: Mapping[str, Any]) -> Usage:
    """Chat/completions/embeddings ("prompt_tokens") and Responses ("input_tokens") usage.

    Both report totals that already include cached input and reasoning output.
    """
    if "prompt_tokens" in u or "completion_tokens" in u:
        inp = as_count(u.get("prompt_tokens"))
        out = as_count(u.get("completion_tokens"))
        in_details = _dict(u.get("prompt_tokens_details"))
        out_details = _dict(u.get("completion_tokens_details"))
    else:
        inp = as_count(u.get("input_tokens"))
        out = as_count(u.get("output_tokens"))
        in_details = _dict(u.get("input_tokens_details"))
        out_details = _dict(u.get("output_tokens_details"))
    cache_read = as_count(in_details.get("cached_tokens"))
    if not cache_read:
        cache_read = as_count(u.get("prompt_cache_hit_tokens"))  # DeepSeek's spelling
    return Usage(
        input=inp,
        output=out,
        cache_read=cache_read,
        cache_write=as_count(in_details.get("cache_write_tokens")),  # OpenRouter
        reasoning=as_count(out_details.get("reasoning_tokens")),
    )


# --- response summary -----------------------------------------------------------------------------


def summarize_json(body: bytes) -> ResponseSummary:
    return summarize_object(body, summarize_doc)


def summarize_doc(
    doc: Mapping[str, Any], error: str | None, *, legacy: bool = False
) -> ResponseSummary:
    """Non-stream chat completion, legacy completion (`legacy`), or embeddings response."""
    usage_obj = doc.get("usage")
    usage = openai_usage(usage_obj) if isinstance(usage_obj, dict) else None
    choice = first_choice(doc.get("choices")) or {}
    calls: list[ToolCall] = []
    if legacy:
        text = _content_text(choice.get("text"))
    else:
        message = _dict(choice.get("message"))
        text = _content_text(message.get("content"))
        for tc in _list(message.get("tool_calls")):
            fn = _dict(_dict(tc).get("function"))
            if fn:
                calls.append(
                    ToolCall(
                        _str(tc.get("id")),
                        _str(fn.get("name")) or "",
                        _args_text(fn.get("arguments")),
                    )
                )
        fc = _dict(message.get("function_call"))  # the pre-tools function-calling API
        if fc:
            calls.append(
                ToolCall(None, _str(fc.get("name")) or "", _args_text(fc.get("arguments")))
            )
    return ResponseSummary(
        model=_str(doc.get("model")),
        usage=usage,
        text=text,
        tool_calls=tuple(calls),
        finish_reason=_str(choice.get("finish_reason")),
        complete=True,
        error=error,
    )


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    # Some compatible servers return content parts instead of a string.
    return "".join(
        t for p in _list(content) if isinstance(p, dict) and isinstance(t := p.get("text"), str)
    )


def _args_text(arguments: object) -> str:
    # OpenAI sends JSON text; a few compatible servers send the object itself.
    if isinstance(arguments, str):
        return arguments
    return "" if arguments is None else json_or_null(arguments)


def summarize_stream(events: list[SSEEvent], *, legacy: bool = False) -> ResponseSummary:
    """A chat completion stream, or a legacy completion stream (`legacy`)."""
    model: str | None = None
    usage: Usage | None = None
    text: list[str] = []
    tools: dict[int, ToolAcc] = {}
    finish: str | None = None
    complete = False
    error: str | None = None
    for ev in events:
        if ev.data.strip() == "[DONE]":
            complete = True
            continue
        obj = loads(ev.data)
        if not isinstance(obj, dict):
            continue
        if ev.event == "error" or body_error(obj):
            error = error_text(obj)
            continue
        if model is None:
            model = _str(obj.get("model")) or None
        usage_obj = obj.get("usage")
        if isinstance(usage_obj, dict):
            usage = openai_usage(usage_obj)
        choice = first_choice(obj.get("choices"))
        if choice is None:
            continue
        finish = _str(choice.get("finish_reason")) or finish
        if legacy:
            if isinstance(piece := choice.get("text"), str):
                text.append(piece)
            continue
        delta = _dict(choice.get("delta"))
        if isinstance(piece := delta.get("content"), str):
            text.append(piece)
        for tc in _list(delta.get("tool_calls")):
            if isinstance(tc, dict):
                _tool_delta(tools, tc)
    return ResponseSummary(
        model=model,
        usage=usage,
        text="".join(text),
        tool_calls=tuple(tools[i].done() for i in sorted(tools)),
        finish_reason=finish,
        complete=complete,
        error=error,
    )


def _tool_delta(tools: dict[int, ToolAcc], tc: Mapping[str, Any]) -> None:
    index = tc.get("index")
    call_id = _str(tc.get("id"))
    if type(index) is not int:
        # Some compatible servers omit the index: a new id starts a new call.
        known = next((i for i, acc in tools.items() if acc.id == call_id), None)
        if known is not None:
            index = known
        elif call_id or not tools:
            index = max(tools, default=-1) + 1
        else:
            index = max(tools)
    acc = tools.get(index)
    if acc is None:
        acc = tools[index] = ToolAcc()
    if call_id and not acc.id:
        acc.id = call_id
    fn = _dict(tc.get("function"))
    name = _str(fn.get("name"))
    if name and not acc.name:  # some servers repeat the name on every fragment
        acc.name = name
    args = fn.get("arguments")
    if isinstance(args, str):
        acc.parts.append(args)
    elif args is not None:
        acc.parts.append(json_or_null(args))


# --- conversation view ----------------------------------------------------------------------------


def view_request(request: Mapping[str, Any]) -> RequestView:
    system: list[str] = []
    messages: list[Message] = []
    for msg in _list(request.get("messages")):
        if not isinstance(msg, dict):
            continue
        role = _str(msg.get("role")) or "?"
        content = msg.get("content")
        if role in ("system", "developer"):
            text = "\n".join(p.text for p in content_parts(content))
            system.append(text if role == "system" else f"(developer) {text}")
            continue
        parts: list[Part] = []
        if role in ("tool", "function"):
            result = "\n".join(p.text for p in content_parts(content))
            call_id = _str(msg.get("tool_call_id"))
            parts.append(Part("tool_result", result, name=_str(msg.get("name")), call_id=call_id))
        else:
            parts.extend(content_parts(content))
            if isinstance(refusal := msg.get("refusal"), str) and refusal:
                parts.append(Part("text", f"(refusal) {refusal}"))
            for call in _list(msg.get("tool_calls")):
                if isinstance(call, dict):
                    fn = _dict(call.get("function"))
                    parts.append(
                        Part(
                            "tool_call",
                            arguments(fn.get("arguments")),
                            name=_str(fn.get("name")) or _str(call.get("type")),
                            call_id=_str(call.get("id")),
                        )
                    )
            legacy = _dict(msg.get("function_call"))
            if legacy:
                parts.append(
                    Part(
                        "tool_call",
                        arguments(legacy.get("arguments")),
                        name=_str(legacy.get("name")),
                    )
                )
        messages.append(Message(role, tuple(parts)))
    tools = [
        _str(_dict(t.get("function")).get("name"))
        or _str(t.get("name"))
        or _str(t.get("type"))
        or "?"
        for t in _list(request.get("tools"))
        if isinstance(t, dict)
    ]
    tools += [
        _str(f.get("name")) or "?" for f in _list(request.get("functions")) if isinstance(f, dict)
    ]
    return RequestView(system, messages, tools)


def content_parts(content: object) -> list[Part]:
    """A message's content (a string or OpenAI content parts, Chat's or Responses') as parts."""
    if isinstance(content, str):
        return [Part("text", content)]
    parts: list[Part] = []
    for item in _list(content):
        if isinstance(item, str):
            parts.append(Part("text", item))
            continue
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind in ("text", "input_text", "output_text") and isinstance(item.get("text"), str):
            parts.append(Part("text", item["text"]))
        elif kind == "refusal":
            parts.append(Part("text", f"(refusal) {_str(item.get('refusal')) or ''}"))
        elif kind == "image_url":
            parts.append(media("image", _str(_dict(item.get("image_url")).get("url"))))
        elif kind == "input_image":
            parts.append(media("image", _str(item.get("image_url")) or _str(item.get("file_id"))))
        elif kind in ("input_audio", "file", "input_file"):
            parts.append(media(str(kind).removeprefix("input_"), _first_str(item)))
        else:
            parts.append(Part("other", json_text(item)))
    return parts


def _first_str(item: Mapping[str, Any]) -> str | None:
    for value in item.values():
        if isinstance(value, dict):
            for inner in value.values():
                if isinstance(inner, str):
                    return inner
    return None


view_response = assembled_response
