"""OpenAI Embeddings (`/embeddings`): inputs in, vectors out. The response carries a model and usage
in the Chat Completions shape, so openai_chat summarises it; the view counts the vectors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmreel.core.jsonish import as_list as _list
from llmreel.providers import openai_chat
from llmreel.providers.common import (
    Message,
    Part,
    RequestView,
    ResponseView,
    assembled_response,
)
from llmreel.providers.embeddings import describe, response_vectors
from llmreel.providers.hosts import OPENAI_EMBEDDINGS

__all__ = ["summarize_json", "summarize_stream", "view_request", "view_response"]

summarize_json = openai_chat.summarize_json
summarize_stream = openai_chat.summarize_stream


def view_request(request: Mapping[str, Any]) -> RequestView:
    value = request.get("input")
    items = value if isinstance(value, list) and not _is_token_list(value) else [value]
    parts = tuple(
        Part("text", item if isinstance(item, str) else f"({len(_list(item))} tokens)")
        for item in items
        if item is not None
    )
    return RequestView([], [Message("input", parts)] if parts else [], [])


def _is_token_list(value: list[Any]) -> bool:
    return bool(value) and all(isinstance(v, int) for v in value)


def view_response(record: Mapping[str, Any]) -> ResponseView:
    body = record.get("response_body")
    if isinstance(body, dict) and isinstance(body.get("data"), list):
        vectors = response_vectors(OPENAI_EMBEDDINGS, body)
        return Message("response", (Part("text", describe(vectors)),)), None
    return assembled_response(record)
