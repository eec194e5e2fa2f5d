"""The wire APIs llmreel reads, in one table, and the two readers that dispatch on it: `summarize`
(a response body: text, tool calls, usage) and `conversation` (a logged exchange, as a chat).

Each wire API is a module with the four functions of `WireAPI`; add a module and a table row to
teach llmreel a new one (and a path shape in `hosts`). Pure; neither reader raises on wire data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from llmreel.core.calls import Endpoint, ResponseSummary
from llmreel.providers import (
    anthropic_messages,
    gemini,
    gemini_embed,
    openai_chat,
    openai_completions,
    openai_embeddings,
    openai_responses,
)
from llmreel.providers.common import (
    EMPTY,
    UNPARSEABLE,
    Message,
    Part,
    RequestView,
    ResponseView,
    text_of,
)
from llmreel.providers.hosts import (
    ANTHROPIC_MESSAGES,
    GEMINI_EMBED,
    GEMINI_GENERATE,
    OPENAI_CHAT,
    OPENAI_COMPLETIONS,
    OPENAI_EMBEDDINGS,
    OPENAI_RESPONSES,
)
from llmreel.providers.sse import SSEEvent, looks_like_sse, parse_sse

__all__ = ["WIRE_APIS", "Conversation", "WireAPI", "conversation", "summarize", "wire_api"]


class WireAPI(Protocol):
    """What llmreel reads from one wire API (each module in this package is one)."""

    def summarize_json(self, body: bytes) -> ResponseSummary:
        """A response body that starts with `{` or `[`."""
        ...

    def summarize_stream(self, events: list[SSEEvent]) -> ResponseSummary:
        """A response sent as Server-Sent Events."""
        ...

    def view_request(self, request: Mapping[str, Any]) -> RequestView:
        """A request's JSON object read as system prompts, messages and tools."""
        ...

    def view_response(self, record: Mapping[str, Any]) -> ResponseView:
        """A log record's response read as the assistant's message and its finish reason."""
        ...


WIRE_APIS: Final[Mapping[str, WireAPI]] = {
    OPENAI_CHAT: openai_chat,
    OPENAI_COMPLETIONS: openai_completions,
    OPENAI_EMBEDDINGS: openai_embeddings,
    OPENAI_RESPONSES: openai_responses,
    ANTHROPIC_MESSAGES: anthropic_messages,
    GEMINI_GENERATE: gemini,
    GEMINI_EMBED: gemini_embed,
}


def wire_api(api: str) -> WireAPI:
    """The module that reads `api`; Chat Completions, the lingua franca, for anything unknown."""
    return WIRE_APIS.get(api, openai_chat)


# --- response summaries ---------------------------------------------------------------------------

_FIRST_BYTE: Final = re.compile(rb"[ \t\r\n]*([^ \t\r\n])")


def summarize(ep: Endpoint, body: bytes, content_type: str) -> ResponseSummary:
    """Summarise a response `body` (already decoded from any Content-Encoding).

    Handles JSON bodies, SSE streams, and Gemini's JSON-array stream. A body starting with
    `{` or `[` is read as JSON whatever `content_type` says (an error body on a streamed
    request is JSON); otherwise it is SSE if `content_type` says so or the body starts like an
    event stream, and "unparseable body" if not (a gateway's HTML error page). Never raises.
    """
    try:
        return _summarize(ep, body, content_type)
    except Exception:  # noqa: BLE001 - last-resort guard: a parser bug must not break the proxy
        return UNPARSEABLE


def _summarize(ep: Endpoint, body: bytes, content_type: str) -> ResponseSummary:
    m = _FIRST_BYTE.match(body)
    if m is None:
        return EMPTY
    if m.group(1) in b"{[":
        return wire_api(ep.api).summarize_json(body)
    if "event-stream" in content_type.lower() or looks_like_sse(body):
        return wire_api(ep.api).summarize_stream(parse_sse(body))
    return UNPARSEABLE


# --- conversations --------------------------------------------------------------------------------


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
    """Read the request and response bodies of a log record (see `llmreel.log.record`) as a
    conversation. Anything unexpected in a body becomes an "other" part with its JSON, never an
    error: bodies come from the wire.
    """
    wire = wire_api(record.get("api") or "")
    body = record.get("request_body")
    request = body if isinstance(body, dict) else {}
    system, messages, tools = wire.view_request(request)
    if not request and body not in (None, ""):
        # Not JSON (or not an object): show what was sent rather than nothing.
        messages = [Message("request", (Part("text", text_of(body)),))]
    params = {k: request[k] for k in _PARAMS if k in request}
    generation = request.get("generationConfig") or request.get("generation_config")
    if isinstance(generation, dict):
        params.update(generation)
    response, finish = wire.view_response(record)
    return Conversation(
        system=tuple(system),
        messages=tuple(messages),
        tools=tuple(tools),
        params=params,
        response=response,
        finish_reason=finish,
    )
