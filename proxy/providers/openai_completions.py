"""OpenAI legacy Completions (`/completions`): a prompt in, text out. Its responses read like Chat
Completions without messages, so the summary is openai_chat's in its `legacy` form.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from llmreel.core.calls import ResponseSummary
from llmreel.providers import openai_chat
from llmreel.providers.common import (
    Message,
    Part,
    RequestView,
    assembled_response,
    summarize_object,
    text_of,
)
from llmreel.providers.sse import SSEEvent

__all__ = ["summarize_json", "summarize_stream", "view_request", "view_response"]

_summarize_legacy_doc = partial(openai_chat.summarize_doc, legacy=True)


def summarize_json(body: bytes) -> ResponseSummary:
    return summarize_object(body, _summarize_legacy_doc)


def summarize_stream(events: list[SSEEvent]) -> ResponseSummary:
    return openai_chat.summarize_stream(events, legacy=True)


def view_request(request: Mapping[str, Any]) -> RequestView:
    prompt = request.get("prompt")
    prompts = prompt if isinstance(prompt, list) else [prompt]
    messages = [Message("user", (Part("text", text_of(p)),)) for p in prompts if p is not None]
    return RequestView([], messages, [])


view_response = assembled_response
