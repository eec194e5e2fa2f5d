"""What a request asks of its wire API: which model, and whether to stream. Pure."""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote

from llmreel.core.calls import Endpoint
from llmreel.providers.hosts import (
    GEMINI_EMBED,
    GEMINI_EMBED_PATH,
    GEMINI_GENERATE,
    GEMINI_MODEL_PATH,
    clean_path,
)

__all__ = ["request_model", "wants_stream"]

_AZURE_DEPLOYMENT: Final = re.compile(r"/deployments/([^/]+)/")


def request_model(ep: Endpoint, path: str, body: object) -> str | None:
    """The model a request asks for.

    Gemini names it in the path (`models/{model}:generateContent`); everyone else in the JSON
    body's "model". Azure's deployment URLs carry no model in the body, so the deployment name
    (which the user chose, often but not always the model name) stands in.
    """
    clean = clean_path(path)
    if ep.api == GEMINI_GENERATE:
        m = GEMINI_MODEL_PATH.search(clean)
        if m:
            return unquote(m.group(1))
    if ep.api == GEMINI_EMBED:
        m = GEMINI_EMBED_PATH.search(clean)
        if m:
            return unquote(m.group(1))
    if isinstance(body, dict):
        model = body.get("model")
        if isinstance(model, str) and model:
            return model
    m = _AZURE_DEPLOYMENT.search(clean)
    if m:
        return unquote(m.group(1))
    return None


def wants_stream(ep: Endpoint, path: str, query: str, body: object) -> bool:
    """Whether the request asks for a streamed response.

    Gemini streams by method name (`:streamGenerateContent`; `alt=sse` in `query` only picks
    SSE framing over a JSON array, both of which are streams). Everyone else sets
    `"stream": true` in the body.
    """
    if ep.api == GEMINI_GENERATE:
        return clean_path(path).endswith(":streamGenerateContent")
    return isinstance(body, dict) and body.get("stream") is True
