"""How the exchange log keeps the vectors of embedding calls: as float32, or not at all.

A response's float lists become base64 float32 strings (`providers.embeddings.compact_response`),
and are turned back into float lists when the record is read; base64 vectors (the openai-python
default) are kept as sent. `llmreel_log_embeddings` off (`--no-log-embeddings`) stores every
vector as null. Runs in the store's writer thread, off the event loop. Pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import orjson

from llmreel.providers.embeddings import (
    EMBEDDING_APIS,
    PACKED,
    compact_response,
    expand_response,
    vector_slots,
)

__all__ = ["expand_vectors", "pack_vectors"]

_HOLE: Final = None


def pack_vectors(
    api: str, body: bytes, *, keep: bool, scrub: Callable[[bytes], bytes], limit: int
) -> tuple[bytes, str | None]:
    """The response `body` as the log stores it, and how its vectors were kept (None: as sent).

    Vectors are set aside while the rest is scrubbed of key-shaped text, so that a base64 vector
    that happens to contain a key shape ("AIza…") is not cut. Anything but an embedding
    response's JSON object is scrubbed and cut at `limit` as any body is.
    """
    if api not in EMBEDDING_APIS:
        return scrub(body[:limit]), None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return scrub(body[:limit]), None
    if not isinstance(doc, dict):
        return scrub(body[:limit]), None
    kept = compact_response(api, doc, keep=keep)
    slots = list(vector_slots(api, doc))
    vectors = [holder[key] for holder, key, _ in slots]
    for holder, key, _ in slots:
        holder[key] = _HOLE
    rest = orjson.dumps(doc)
    scrubbed = scrub(rest)
    if kept is None and scrubbed == rest:
        return scrub(body[:limit]) if len(body) > limit else body, None
    try:
        clean: Any = orjson.loads(scrubbed)
    except orjson.JSONDecodeError:
        return scrubbed[:limit], kept
    for (holder, key, _), vector in zip(vector_slots(api, clean), vectors, strict=False):
        holder[key] = vector
    return orjson.dumps(clean)[:limit], kept


def expand_vectors(record: dict[str, Any], kept: str | None) -> None:
    """Turn a read record's packed vectors back into float lists (`kept` as `pack_vectors` said)."""
    body = record.get("response_body")
    if kept == PACKED and isinstance(body, dict):
        expand_response(str(record.get("api")), body)
