"""An exchange read as a conversation: system prompt, messages by role, tool calls and results.

Pure functions over a log record (see `proxy.logrecord`); no I/O and no rendering. Understands
OpenAI Chat Completions and legacy Completions, OpenAI Responses, Anthropic Messages, Gemini
generateContent and embeddings. Anything unexpected in a body becomes an "other" part with its
JSON, never an error: bodies come from the wire.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from llmreel.core.jsonish import as_dict as _dict
from llmreel.core.jsonish import as_list as _list
from llmreel.core.jsonish import as_str as _str

__all__ = ["Conversation", "Message", "Part", "conversation"]

_MEDIA_PREVIEW: Final = 60


@dataclass(frozen=True, slots=True)
class Part:
    """One piece of a message.

    `kind` is "text", "thinking", "tool_call" (`name`, `call_id`, `text` = arguments as JSON),
    "tool_result" (`call_id`, `name` when the wire gives it, `text` = the result), "media"
    (`text` describes it: type and size, never the bytes) or "other" (`text` is compact JSON).
    """

    kind: str
    text: str = ""
    name: str | None = None
    call_id: str | None = None
    is_error: bool = False


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    parts: tuple[Part, ...]


@dataclass(frozen=True, slots=True)
class Conversation:
    """What was asked and what came back.

    `system` holds the system prompt(s) (OpenAI system/developer messages, Responses
    `instructions`, Anthropic `system`, Gemini `systemInstruction`). `response` is the answer
    as the client saw it, assembled when streamed; None when there was none (an error).
    """

    system: tuple[str, ...] = ()
    messages: tuple[Message, ...] = ()
    tools: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    response: Message | None = None
    finish_reason: str | None = None


# Request parameters worth showing next to the conversation.
_PARAMS: Final = (
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "reasoning_effort",
    "tool_choice",
    "response_format",
    "seed",
    "stop",
    "n",
    "dimensions",
    "encoding_format",
)


def conversation(record: Mapping[str, Any]) -> Conversation:
    """Read the request and response bodies of a log record as a conversation."""
    api = record.get("api") or ""
    body = record.get("request_body")
    request = body if isinstance(body, dict) else {}
    system: list[str] = []
    messages: list[Message] = []
    tools: list[str] = []
    if api == "anthropic.messages":
        system, messages, tools = _anthropic(request)
    elif api == "openai.responses":
        system, messages, tools = _responses(request)
    elif api == "gemini.generate":
        system, messages, tools = _gemini(request)
    elif api == "openai.embeddings":
        messages = _embedding_input(request.get("input"))
    elif api == "openai.completions":
        messages = _completion_prompt(request.get("prompt"))
    else:
        system, messages, tools = _openai_chat(request)
    if not request and body not in (None, ""):
        # Not JSON (or not an object): show what was sent rather than nothing.
        messages = [Message("request", (Part("text", _text_of(body)),))]
    params = {k: request[k] for k in _PARAMS if k in request}
    generation = request.get("generationConfig") or request.get("generation_config")
    if isinstance(generation, dict):
        params.update(generation)
    response, finish = _response(record, api)
    return Conversation(
        system=tuple(system),
        messages=tuple(messages),
        tools=tuple(tools),
        params=params,
        response=response,
        finish_reason=finish,
    )


# --- OpenAI Chat Completions ------------------------------------------------------------------


def _openai_chat(request: Mapping[str, Any]) -> tuple[list[str], list[Message], list[str]]:
    system: list[str] = []
    messages: list[Message] = []
    for msg in _list(request.get("messages")):
        if not isinstance(msg, dict):
            continue
        role = _str(msg.get("role")) or "?"
        content = msg.get("content")
        if role in ("system", "developer"):
            text = "\n".join(p.text for p in _openai_content(content))
            system.append(text if role == "system" else f"(developer) {text}")
            continue
        parts: list[Part] = []
        if role in ("tool", "function"):
            result = "\n".join(p.text for p in _openai_content(content))
            call_id = _str(msg.get("tool_call_id"))
            parts.append(Part("tool_result", result, name=_str(msg.get("name")), call_id=call_id))
        else:
            parts.extend(_openai_content(content))
            if isinstance(refusal := msg.get("refusal"), str) and refusal:
                parts.append(Part("text", f"(refusal) {refusal}"))
            for call in _list(msg.get("tool_calls")):
                if isinstance(call, dict):
                    fn = _dict(call.get("function"))
                    parts.append(
                        Part(
                            "tool_call",
                            _arguments(fn.get("arguments")),
                            name=_str(fn.get("name")) or _str(call.get("type")),
                            call_id=_str(call.get("id")),
                        )
                    )
            legacy = _dict(msg.get("function_call"))
            if legacy:
                parts.append(
                    Part(
                        "tool_call",
                        _arguments(legacy.get("arguments")),
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
    return system, messages, tools


def _openai_content(content: object) -> list[Part]:
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
            parts.append(_media("image", _str(_dict(item.get("image_url")).get("url"))))
        elif kind == "input_image":
            parts.append(_media("image", _str(item.get("image_url")) or _str(item.get("file_id"))))
        elif kind in ("input_audio", "file", "input_file"):
            parts.append(_media(str(kind).removeprefix("input_"), _first_str(item)))
        else:
            parts.append(Part("other", _json(item)))
    return parts


def _completion_prompt(prompt: object) -> list[Message]:
    prompts = prompt if isinstance(prompt, list) else [prompt]
    return [Message("user", (Part("text", _text_of(p)),)) for p in prompts if p is not None]


def _embedding_input(value: object) -> list[Message]:
    items = value if isinstance(value, list) and not _is_token_list(value) else [value]
    parts = tuple(
        Part("text", item if isinstance(item, str) else f"({len(_list(item))} tokens)")
        for item in items
        if item is not None
    )
    return [Message("input", parts)] if parts else []


def _is_token_list(value: list[Any]) -> bool:
    return bool(value) and all(isinstance(v, int) for v in value)


# --- OpenAI Responses -------------------------------------------------------------------------


def _responses(request: Mapping[str, Any]) -> tuple[list[str], list[Message], list[str]]:
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
            parts = _openai_content(item.get("content"))
            if role in ("system", "developer"):
                text = "\n".join(p.text for p in parts)
                system.append(text if role == "system" else f"(developer) {text}")
            else:
                messages.append(Message(role, tuple(parts)))
        elif kind in ("function_call", "custom_tool_call"):
            args = item.get("arguments", item.get("input"))
            part = Part("tool_call", _arguments(args), name=_str(item.get("name")),
                        call_id=_str(item.get("call_id")) or _str(item.get("id")))  # fmt: skip
            _append_part(messages, "assistant", part)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            part = Part(
                "tool_result", _text_of(item.get("output")), call_id=_str(item.get("call_id"))
            )
            _append_part(messages, "tool", part)
        elif kind == "reasoning":
            summary = "\n".join(
                _str(s.get("text")) or "" for s in _list(item.get("summary")) if isinstance(s, dict)
            )
            _append_part(messages, "assistant", Part("thinking", summary or "(reasoning)"))
        else:
            _append_part(messages, "assistant", Part("other", _json(item)))
    tools = [
        _str(t.get("name")) or _str(t.get("type")) or "?"
        for t in _list(request.get("tools"))
        if isinstance(t, dict)
    ]
    return system, messages, tools


def _append_part(messages: list[Message], role: str, part: Part) -> None:
    # Consecutive items of one role (several function calls in a row) read as one turn.
    if messages and messages[-1].role == role:
        messages[-1] = Message(role, (*messages[-1].parts, part))
    else:
        messages.append(Message(role, (part,)))


# --- Anthropic Messages -----------------------------------------------------------------------


def _anthropic(request: Mapping[str, Any]) -> tuple[list[str], list[Message], list[str]]:
    system: list[str] = []
    raw_system = request.get("system")
    if isinstance(raw_system, str) and raw_system:
        system.append(raw_system)
    elif isinstance(raw_system, list):
        text = "\n".join(p.text for p in _anthropic_blocks(raw_system))
        if text:
            system.append(text)
    messages = [
        Message(_str(msg.get("role")) or "?", tuple(_anthropic_blocks(msg.get("content"))))
        for msg in _list(request.get("messages"))
        if isinstance(msg, dict)
    ]
    tools = [
        _str(t.get("name")) or _str(t.get("type")) or "?"
        for t in _list(request.get("tools"))
        if isinstance(t, dict)
    ]
    return system, messages, tools


def _anthropic_blocks(content: object) -> list[Part]:
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
            parts.append(Part("tool_call", _json(block.get("input", {})),
                              name=_str(block.get("name")), call_id=_str(block.get("id"))))  # fmt: skip
        elif kind == "tool_result":
            inner = block.get("content")
            result = (
                inner
                if isinstance(inner, str)
                else "\n".join(p.text for p in _anthropic_blocks(inner))
            )
            parts.append(Part("tool_result", result, call_id=_str(block.get("tool_use_id")),
                              is_error=block.get("is_error") is True))  # fmt: skip
        elif kind == "thinking":
            parts.append(Part("thinking", _str(block.get("thinking")) or ""))
        elif kind == "redacted_thinking":
            parts.append(Part("thinking", "(redacted)"))
        elif kind in ("image", "document"):
            source = _dict(block.get("source"))
            parts.append(_media(str(kind), _str(source.get("url")) or _str(source.get("data"))
                                or _str(source.get("file_id")), _str(source.get("media_type"))))  # fmt: skip
        else:
            parts.append(Part("other", _json(block)))
    return parts


# --- Gemini -----------------------------------------------------------------------------------


def _gemini(request: Mapping[str, Any]) -> tuple[list[str], list[Message], list[str]]:
    system: list[str] = []
    instruction = _get(request, "systemInstruction", "system_instruction")
    if isinstance(instruction, dict):
        text = "\n".join(p.text for p in _gemini_parts(instruction.get("parts")))
        if text:
            system.append(text)
    elif isinstance(instruction, str):
        system.append(instruction)
    messages = [
        Message(_str(content.get("role")) or "user", tuple(_gemini_parts(content.get("parts"))))
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
    return system, messages, tools


def _gemini_parts(parts: object) -> list[Part]:
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
            out.append(Part("tool_call", _json(call.get("args", {})),
                            name=_str(call.get("name")), call_id=_str(call.get("id"))))  # fmt: skip
        elif isinstance(result, dict):
            out.append(Part("tool_result", _json(result.get("response")),
                            name=_str(result.get("name")), call_id=_str(result.get("id"))))  # fmt: skip
        elif isinstance(inline, dict):
            out.append(_media("inline", _str(inline.get("data")),
                              _str(_get(inline, "mimeType", "mime_type"))))  # fmt: skip
        elif isinstance(data := _get(part, "fileData", "file_data"), dict):
            out.append(_media("file", _str(_get(data, "fileUri", "file_uri"))))
        elif "thoughtSignature" in part or "thought_signature" in part:
            continue  # an opaque token for the next turn, nothing to read
        else:
            out.append(Part("other", _json(part)))
    return out


# --- the response -----------------------------------------------------------------------------


def _response(record: Mapping[str, Any], api: str) -> tuple[Message | None, str | None]:
    assembled = record.get("assembled")
    body = record.get("response_body")
    status = record.get("status")
    if api == "openai.embeddings" and isinstance(body, dict) and isinstance(body.get("data"), list):
        return Message("response", (Part("text", _embeddings_summary(body["data"])),)), None
    parts: list[Part] = []
    finish: str | None = None
    if isinstance(assembled, dict):
        finish = _str(assembled.get("finish_reason"))
        parts += _thinking(record, api)
        if text := _str(assembled.get("text")):
            parts.append(Part("text", text))
        for call in _list(assembled.get("tool_calls")):
            if isinstance(call, dict):
                parts.append(Part("tool_call", _arguments(call.get("arguments")),
                                  name=_str(call.get("name")), call_id=_str(call.get("id"))))  # fmt: skip
        error = _str(assembled.get("error"))
        # "unparseable body" and "empty body" say how the summary went, not what the provider
        # said: the body itself (shown below) is the better answer.
        if error and error not in ("unparseable body", "empty body"):
            parts.append(Part("text", error, is_error=True))
    if not parts and body not in (None, ""):
        ok = isinstance(status, int) and status < 400
        parts.append(Part("text", _text_of(body), is_error=not ok))
    if not parts:
        return None, finish
    return Message("assistant", tuple(parts)), finish


def _thinking(record: Mapping[str, Any], api: str) -> list[Part]:
    """Reasoning the response showed (Anthropic thinking blocks, Responses reasoning summaries)."""
    body = record.get("response_body")
    parts: list[Part] = []
    if isinstance(body, dict):
        if api == "anthropic.messages":
            parts = [p for p in _anthropic_blocks(body.get("content")) if p.kind == "thinking"]
        elif api == "openai.responses":
            for item in _list(body.get("output")):
                if isinstance(item, dict) and item.get("type") == "reasoning":
                    summary = [
                        _str(s.get("text"))
                        for s in _list(item.get("summary"))
                        if isinstance(s, dict)
                    ]
                    if text := "\n".join(s for s in summary if s):
                        parts.append(Part("thinking", text))
        return parts
    if record.get("response_body_format") == "sse" and api == "anthropic.messages":
        pieces = []
        for event in _list(record.get("events")):
            delta = _dict(_dict(_dict(event).get("data")).get("delta"))
            if delta.get("type") == "thinking_delta" and isinstance(delta.get("thinking"), str):
                pieces.append(delta["thinking"])
        if pieces:
            parts.append(Part("thinking", "".join(pieces)))
    return parts


def _embeddings_summary(data: list[Any]) -> str:
    dims: set[str] = set()
    for item in data:
        vector = _dict(item).get("embedding")
        if isinstance(vector, list):
            dims.add(f"{len(vector)} dimensions")
        elif isinstance(vector, str):
            dims.add(f"base64, {len(vector) * 3 // 4 // 4} float32 dimensions")
    noun = "embedding" if len(data) == 1 else "embeddings"
    return f"{len(data)} {noun}" + (f" ({', '.join(sorted(dims))})" if dims else "")


# --- small helpers over untrusted JSON ---------------------------------------------------------





def _get(obj: Mapping[str, Any], *names: str) -> Any:
    # Gemini's REST API takes camelCase and snake_case alike; SDKs send either.
    for name in names:
        if name in obj:
            return obj[name]
    return None


def _json(value: object) -> str:
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        return repr(value)


def _arguments(value: object) -> str:
    """Tool-call arguments as JSON text (the wire sends a JSON string or an object)."""
    return value if isinstance(value, str) else _json(value)


def _text_of(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        texts = [_str(v.get("text")) for v in value]
        if texts and all(t is not None for t in texts):
            return "\n".join(t for t in texts if t is not None)
    return _json(value)


def _first_str(item: Mapping[str, Any]) -> str | None:
    for value in item.values():
        if isinstance(value, dict):
            for inner in value.values():
                if isinstance(inner, str):
                    return inner
    return None


def _media(kind: str, ref: str | None, mime: str | None = None) -> Part:
    """A media part described, never dumped: a data URL or base64 payload can be megabytes."""
    label = f"{kind}" + (f" {mime}" if mime else "")
    if ref is None:
        return Part("media", label)
    if ref.startswith("data:"):
        head, _, data = ref.partition(",")
        return Part("media", f"{label} {head[5:]}, {len(data) * 3 // 4} bytes inline")
    if ref.startswith(("http://", "https://", "gs://", "file-", "files/")) and len(ref) < 500:
        return Part("media", f"{label} {ref}")
    if len(ref) > _MEDIA_PREVIEW:
        return Part("media", f"{label}, {len(ref) * 3 // 4} bytes inline")
    return Part("media", f"{label} {ref}")
