"""Gemini embeddings (`models/{model}:embedContent` and `:batchEmbedContents`): the summary (no
text; usage when the response reports it) and the view (the texts in, the vectors counted).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmreel.core.calls import ResponseSummary, Usage
from llmreel.core.jsonish import as_dict as _dict
from llmreel.providers.common import (
    UNPARSEABLE,
    Message,
    Part,
    RequestView,
    ResponseView,
    as_count,
    assembled_response,
    summarize_object,
)
from llmreel.providers.embeddings import describe, request_texts, response_vectors
from llmreel.providers.hosts import GEMINI_EMBED
from llmreel.providers.sse import SSEEvent

__all__ = ["summarize_json", "summarize_stream", "view_request", "view_response"]


def summarize_json(body: bytes) -> ResponseSummary:
    return summarize_object(body, _read)


def _read(doc: Mapping[str, Any], error: str | None) -> ResponseSummary:
    usage = _dict(doc.get("usageMetadata"))
    tokens = as_count(usage.get("promptTokenCount")) if usage else 0
    return ResponseSummary(
        None, Usage(input=tokens, output=0) if usage else None, "", (), None, error is None, error
    )


def summarize_stream(events: list[SSEEvent]) -> ResponseSummary:
    return UNPARSEABLE  # embeddings are never streamed


def view_request(request: Mapping[str, Any]) -> RequestView:
    texts = request_texts(GEMINI_EMBED, request)
    parts = tuple(Part("text", t if t is not None else "(no text)") for t in texts)
    return RequestView([], [Message("input", parts)] if parts else [], [])


def view_response(record: Mapping[str, Any]) -> ResponseView:
    body = record.get("response_body")
    if isinstance(body, dict) and ("embedding" in body or "embeddings" in body):
        vectors = response_vectors(GEMINI_EMBED, body)
        return Message("response", (Part("text", describe(vectors)),)), None
    return assembled_response(record)
