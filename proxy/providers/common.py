"""What the wire-API modules share: total helpers over untrusted JSON for response summaries, and
the parts and messages their conversation views are made of. Pure; nothing here raises on wire data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import orjson

from llmreel.core.calls import ResponseSummary, ToolCall
from llmreel.core.jsonish import as_list as _list
from llmreel.core.jsonish import as_str as _str
from llmreel.providers.sse import SSEEvent

__all__ = [
    "EMPTY",
    "UNPARSEABLE",
    "Message",
    "Part",
    "RequestView",
    "ResponseView",
    "ToolAcc",
    "arguments",
    "as_count",
    "assembled_response",
    "body_error",
    "error_text",
    "first_choice",
    "json_or_null",
    "json_text",
    "loads",
    "media",
    "no_thinking",
    "summarize_object",
    "text_of",
    "tool_names",
    "typed_events",
]

# --- response summaries -------------------------------------------------------------------------


def _failed(error: str) -> ResponseSummary:
    return ResponseSummary(None, None, "", (), None, False, error)


UNPARSEABLE: Final = _failed("unparseable body")
EMPTY: Final = _failed("empty body")

_ERROR_MAX: Final = 500


def summarize_object(
    body: bytes, read: Callable[[Mapping[str, Any], str | None], ResponseSummary]
) -> ResponseSummary:
    """A JSON body that must be one object, summarised by `read(doc, error)`.

    `error` is the body's error text when it is an error body, else None. Anything but an object
    is UNPARSEABLE.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return UNPARSEABLE
    if not isinstance(doc, dict):
        return UNPARSEABLE
    return read(doc, body_error(doc))


def as_count(value: object) -> int:
    """A token count from the wire; anything that is not a finite, non-negative number is 0."""
    if type(value) is int:
        return max(0, value)
    if type(value) is float and math.isfinite(value) and value > 0:
        return int(value)
    return 0


def loads(data: str) -> object:
    """An event's JSON data, or None when it is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def typed_events(events: Iterable[SSEEvent]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each event whose data is a JSON object, with its kind: the object's "type", else the SSE
    event name (Anthropic and Responses streams name each event both ways)."""
    for ev in events:
        obj = loads(ev.data)
        if isinstance(obj, dict):
            yield _str(obj.get("type")) or ev.event, obj


def json_or_null(value: object) -> str:
    """Tool-call arguments as compact JSON text; "null" when the value cannot be encoded."""
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        return "null"


def error_text(obj: Mapping[str, Any]) -> str:
    """ "kind: message" from any provider's error object (nested under "error" or not)."""
    inner = obj.get("error")
    if isinstance(inner, str) and inner:
        return inner[:_ERROR_MAX]  # Ollama and others: {"error": "model not found"}
    err = inner if isinstance(inner, dict) else obj
    kind = next(
        (
            k
            for k in (err.get("code"), err.get("type"), err.get("status"))
            if isinstance(k, str) and k and k != "error"
        ),
        None,
    )
    message = _str(err.get("message"))
    text = ": ".join(p for p in (kind, message) if p) or "error"
    return text[:_ERROR_MAX]


def body_error(doc: Mapping[str, Any]) -> str | None:
    """The error a body or stream chunk reports, or None when it reports none."""
    err = doc.get("error")
    if err is None or err == "" or err == {}:
        return None
    if isinstance(err, (dict, str)):
        return error_text(doc)
    return None


def first_choice(choices: object) -> dict[str, Any] | None:
    """Choice (or candidate) 0: with n > 1, only the first is summarised."""
    for choice in _list(choices):
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            return choice
    return None


class ToolAcc:
    """A tool call being assembled from fragments."""

    __slots__ = ("id", "name", "parts")

    def __init__(
        self, call_id: str | None = None, name: str = "", parts: list[str] | None = None
    ) -> None:
        self.id = call_id
        self.name = name
        self.parts = parts if parts is not None else []

    def done(self) -> ToolCall:
        return ToolCall(self.id, self.name, "".join(self.parts))


# --- conversation views -------------------------------------------------------------------------


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


class RequestView(NamedTuple):
    """A request body read as a conversation: system prompts, messages, and the tools offered."""

    system: list[str]
    messages: list[Message]
    tools: list[str]


#: The answer as the client saw it (None when there was none), and why it stopped.
ResponseView = tuple[Message | None, str | None]

_MEDIA_PREVIEW: Final = 60


def no_thinking(record: Mapping[str, Any]) -> list[Part]:
    return []


def assembled_response(
    record: Mapping[str, Any],
    thinking: Callable[[Mapping[str, Any]], list[Part]] = no_thinking,
) -> ResponseView:
    """The response of a log record from its `assembled` summary, or its body when that is empty.

    `thinking` reads any reasoning the response showed; it comes first, as it did on the wire.
    """
    assembled = record.get("assembled")
    body = record.get("response_body")
    status = record.get("status")
    parts: list[Part] = []
    finish: str | None = None
    if isinstance(assembled, dict):
        finish = _str(assembled.get("finish_reason"))
        parts += thinking(record)
        if text := _str(assembled.get("text")):
            parts.append(Part("text", text))
        for call in _list(assembled.get("tool_calls")):
            if isinstance(call, dict):
                parts.append(Part("tool_call", arguments(call.get("arguments")),
                                  name=_str(call.get("name")), call_id=_str(call.get("id"))))  # fmt: skip
        error = _str(assembled.get("error"))
        # "unparseable body" and "empty body" say how the summary went, not what the provider
        # said: the body itself (shown below) is the better answer.
        if error and error not in ("unparseable body", "empty body"):
            parts.append(Part("text", error, is_error=True))
    if not parts and body not in (None, ""):
        ok = isinstance(status, int) and status < 400
        parts.append(Part("text", text_of(body), is_error=not ok))
    if not parts:
        return None, finish
    return Message("assistant", tuple(parts)), finish


def json_text(value: object) -> str:
    """Compact JSON for display; the repr when the value cannot be encoded."""
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        return repr(value)


def arguments(value: object) -> str:
    """Tool-call arguments as JSON text (the wire sends a JSON string or an object)."""
    return value if isinstance(value, str) else json_text(value)


def text_of(value: object) -> str:
    """A value shown as text: strings as they are, a list of text parts joined, else JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        texts = [_str(v.get("text")) for v in value]
        if texts and all(t is not None for t in texts):
            return "\n".join(t for t in texts if t is not None)
    return json_text(value)


def media(kind: str, ref: str | None, mime: str | None = None) -> Part:
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


def tool_names(tools: object) -> list[str]:
    """Names of the tools a request offers (a tool without a name goes by its type)."""
    return [
        _str(t.get("name")) or _str(t.get("type")) or "?"
        for t in _list(tools)
        if isinstance(t, dict)
    ]
