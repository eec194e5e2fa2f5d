"""Gemini generateContent (`models/{model}:generateContent` and `:streamGenerateContent`): its
response summary and usage (one chunk, an SSE stream or a JSON array of chunks), and its
conversation view (`systemInstruction`, `contents` and their parts).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import orjson

from llmreel.core.calls import ResponseSummary, ToolCall, Usage
from llmreel.core.jsonish import as_dict as _dict
from llmreel.core.jsonish import as_list as _list
from llmreel.core.jsonish import as_str as _str
from llmreel.providers.common import (
    UNPARSEABLE,
    Message,
    Part,
    RequestView,
    as_count,
    assembled_response,
    body_error,
    error_text,
    first_choice,
    json_or_null,
    json_text,
    loads,
    media,
)
from llmreel.providers.sse import SSEEvent

__all__ = ["summarize_json", "summarize_stream", "view_request", "view_response"]


# --- usage ----------------------------------------------------------------------------------------


def _usage(u: Mapping[str, Any]) -> Usage:
    """promptTokenCount includes cached content; candidates exclude thoughts, so add them.

    toolUsePromptTokenCount (input the model read from tools such as grounding) is billed as
    input but reported outside promptTokenCount, so it is added too.
    """
    thoughts = as_count(u.get("thoughtsTokenCount"))
    return Usage(
        input=as_count(u.get("promptTokenCount")) + as_count(u.get("toolUsePromptTokenCount")),
        output=as_count(u.get("candidatesTokenCount")) + thoughts,
        cache_read=as_count(u.get("cachedContentTokenCount")),
        reasoning=thoughts,
    )


# --- response summary -----------------------------------------------------------------------------


def summarize_json(body: bytes) -> ResponseSummary:
    """One response object, or a stream sent as a JSON array of them (possibly cut short)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        # A Gemini array stream cut short is invalid JSON, but its finished chunks count.
        chunks = _complete_array_items(body)
        return _summarize_chunks(chunks) if chunks else UNPARSEABLE
    if isinstance(doc, list):
        return _summarize_chunks(doc)
    if not isinstance(doc, dict):
        return UNPARSEABLE
    return replace(_summarize_chunks([doc]), complete=True)  # a whole JSON body is complete


def summarize_stream(events: list[SSEEvent]) -> ResponseSummary:
    return _summarize_chunks(obj for ev in events if isinstance(obj := loads(ev.data), dict))


def _summarize_chunks(chunks: Iterable[object]) -> ResponseSummary:
    """A generateContent response is one chunk; a stream (SSE or JSON array) is many.

    Usage is cumulative per chunk, so the last chunk that has it wins. Parts marked
    `thought: true` are thinking summaries, not answer text.
    """
    model: str | None = None
    usage: Usage | None = None
    text: list[str] = []
    calls: list[ToolCall] = []
    finish: str | None = None
    complete = False
    error: str | None = None
    for chunk in chunks:
        if not isinstance(chunk, dict):
            continue
        if body_error(chunk):
            error = error_text(chunk)
            continue
        model = _str(chunk.get("modelVersion")) or model
        usage_obj = chunk.get("usageMetadata")
        if isinstance(usage_obj, dict):
            usage = _usage(usage_obj)
        blocked = _str(_dict(chunk.get("promptFeedback")).get("blockReason"))
        if blocked:
            finish, complete = blocked, True
        candidate = first_choice(chunk.get("candidates"))
        if candidate is None:
            continue
        for part in _list(_dict(candidate.get("content")).get("parts")):
            if not isinstance(part, dict):
                continue
            if isinstance(piece := part.get("text"), str) and not part.get("thought"):
                text.append(piece)
            call = part.get("functionCall")
            if isinstance(call, dict):
                calls.append(
                    ToolCall(
                        _str(call.get("id")),
                        _str(call.get("name")) or "",
                        json_or_null(call.get("args", {})),
                    )
                )
        reason = _str(candidate.get("finishReason"))
        if reason:
            finish, complete = reason, True
    return ResponseSummary(model, usage, "".join(text), tuple(calls), finish, complete, error)


def _complete_array_items(body: bytes) -> list[dict[str, Any]]:
    """The objects that arrived whole in a JSON array cut short (only used on invalid JSON)."""
    text = body.decode("utf-8", errors="replace")
    decoder = json.JSONDecoder()
    i = _skip_separators(text, 0)
    if text[i : i + 1] != "[":
        return []
    i += 1
    items: list[dict[str, Any]] = []
    while True:
        i = _skip_separators(text, i)
        if i >= len(text) or text[i] == "]":
            return items
        try:
            obj, i = decoder.raw_decode(text, i)
        except (ValueError, RecursionError):
            return items
        if isinstance(obj, dict):
            items.append(obj)


def _skip_separators(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n,":
        i += 1
    return i


# --- conversation view ----------------------------------------------------------------------------


def view_request(request: Mapping[str, Any]) -> RequestView:
    system: list[str] = []
    instruction = _get(request, "systemInstruction", "system_instruction")
    if isinstance(instruction, dict):
        text = "\n".join(p.text for p in _parts(instruction.get("parts")))
        if text:
            system.append(text)
    elif isinstance(instruction, str):
        system.append(instruction)
    messages = [
        Message(_str(content.get("role")) or "user", tuple(_parts(content.get("parts"))))
        for content in _list(request.get("contents"))
        if isinstance(content, dict)
    ]
    tools: list[str] = []
    for tool in _list(request.get("tools")):
        if not isinstance(tool, dict):
            continue
        declarations = _get(tool, "functionDeclarations", "function_declarations")
        if isinstance(declarations, list):
            tools += [_str(d.get("name")) or "?" for d in declarations if isinstance(d, dict)]
        else:
            tools += list(tool)  # googleSearch, codeExecution, ...
    return RequestView(system, messages, tools)


def _parts(parts: object) -> list[Part]:
    out: list[Part] = []
    for part in _list(parts):
        if not isinstance(part, dict):
            continue
        call = _get(part, "functionCall", "function_call")
        result = _get(part, "functionResponse", "function_response")
        inline = _get(part, "inlineData", "inline_data")
        if isinstance(part.get("text"), str):
            kind = "thinking" if part.get("thought") is True else "text"
            if part["text"]:  # empty text parts only carry a thoughtSignature
                out.append(Part(kind, part["text"]))
        elif isinstance(call, dict):
            out.append(Part("tool_call", json_text(call.get("args", {})),
                            name=_str(call.get("name")), call_id=_str(call.get("id"))))  # fmt: skip
        elif isinstance(result, dict):
            out.append(Part("tool_result", json_text(result.get("response")),
                            name=_str(result.get("name")), call_id=_str(result.get("id"))))  # fmt: skip
        elif isinstance(inline, dict):
            out.append(media("inline", _str(inline.get("data")),
                             _str(_get(inline, "mimeType", "mime_type"))))  # fmt: skip
        elif isinstance(data := _get(part, "fileData", "file_data"), dict):
            out.append(media("file", _str(_get(data, "fileUri", "file_uri"))))
        elif "thoughtSignature" in part or "thought_signature" in part:
            continue  # an opaque token for the next turn, nothing to read
        else:
            out.append(Part("other", json_text(part)))
    return out


def _get(obj: Mapping[str, Any], *names: str) -> Any:
    # Gemini's REST API takes camelCase and snake_case alike; SDKs send either.
    for name in names:
        if name in obj:
            return obj[name]
    return None


view_response = assembled_response
