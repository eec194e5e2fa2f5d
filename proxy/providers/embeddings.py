"""Embedding calls, read the same way for every wire API that makes them: the texts a request
embeds, the vectors its response carries, and the compact form the exchange log keeps them in.

OpenAI `/embeddings` sends `input` (a string, a list of strings, or tokens) and answers
`data[i].embedding`, a list of floats or, with `encoding_format: "base64"` (the openai-python
default), the little-endian float32 bytes in base64. Gemini `embedContent` sends `content.parts`
and answers `embedding.values`; `batchEmbedContents` sends `requests[i].content` and answers
`embeddings[i].values`. Vectors are returned as little-endian float32 bytes.

The log keeps vectors as float32 (`compact_response`): float lists are stored as base64 float32
strings, which compress to about 4 bytes a dimension, and are turned back into float lists when
read (`expand_response`). Pure; nothing here raises on wire data.
"""

from __future__ import annotations

import base64
import binascii
import sys
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from llmreel.core.jsonish import as_dict as _dict
from llmreel.core.jsonish import as_list as _list
from llmreel.providers.hosts import GEMINI_EMBED, OPENAI_EMBEDDINGS

__all__ = [
    "DROPPED",
    "EMBEDDING_APIS",
    "PACKED",
    "Embedded",
    "compact_response",
    "describe",
    "embedded",
    "expand_response",
    "request_texts",
    "response_vectors",
    "vector_slots",
]

EMBEDDING_APIS: Final = frozenset({OPENAI_EMBEDDINGS, GEMINI_EMBED})
_SWAP: Final = sys.byteorder != "little"  # the wire's float32 are little-endian


@dataclass(frozen=True, slots=True)
class Embedded:
    """One input of an embedding call: its position, its text (None when it was sent as tokens)
    and its vector as little-endian float32 bytes."""

    index: int
    text: str | None
    vector: bytes

    @property
    def dim(self) -> int:
        return len(self.vector) // 4


# --- texts ----------------------------------------------------------------------------------------


def request_texts(api: str, request: Mapping[str, Any]) -> list[str | None]:
    """The texts a request embeds, in order; None for an input sent as token ids."""
    if api == GEMINI_EMBED:
        if isinstance(request.get("requests"), list):
            return [_gemini_text(_dict(r).get("content")) for r in request["requests"]]
        return [_gemini_text(request.get("content"))]
    value = request.get("input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            return [None]  # one input, pre-tokenised
        return [v if isinstance(v, str) else None for v in value]
    return []


def _gemini_text(content: object) -> str | None:
    texts = [
        p["text"]
        for p in _list(_dict(content).get("parts"))
        if isinstance(_dict(p).get("text"), str)
    ]
    return "\n".join(texts) if texts else None


# --- vectors --------------------------------------------------------------------------------------


def response_vectors(api: str, response: Mapping[str, Any]) -> list[bytes | None]:
    """The vectors of a response in input order, as float32 bytes (None where one is unreadable)."""
    return [_f32(value) for _, _, value in vector_slots(api, response)]


def vector_slots(
    api: str, response: Mapping[str, Any]
) -> Iterator[tuple[dict[str, Any], str, Any]]:
    """(holder, key, value) of each vector in input order: `holder[key]` is the vector."""
    if api == GEMINI_EMBED:
        items = response.get("embeddings")
        holders = _list(items) if isinstance(items, list) else [response.get("embedding")]
        for holder in holders:
            if isinstance(holder, dict):
                yield holder, "values", holder.get("values")
        return
    data = [d for d in _list(response.get("data")) if isinstance(d, dict)]
    data.sort(key=_position)
    for item in data:
        yield item, "embedding", item.get("embedding")


def _position(item: Mapping[str, Any]) -> int:
    index = item.get("index")
    return index if isinstance(index, int) else 0


def _f32(value: object) -> bytes | None:
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return None
        return raw if raw and len(raw) % 4 == 0 else None
    if isinstance(value, list) and value:
        try:
            floats = array("f", value)  # numpy is not imported here: the proxy stays lean
        except (TypeError, ValueError, OverflowError):
            return None
        if _SWAP:
            floats.byteswap()
        return floats.tobytes()
    return None


def describe(vectors: list[bytes | None]) -> str:
    """ "3 embeddings (768 dimensions)", or "(vectors not logged)" when they were dropped."""
    dims = sorted({f"{len(v) // 4} dimensions" for v in vectors if v is not None})
    noun = "embedding" if len(vectors) == 1 else "embeddings"
    if vectors and not dims:
        return f"{len(vectors)} {noun} (vectors not logged)"
    return f"{len(vectors)} {noun}" + (f" ({', '.join(dims)})" if dims else "")


def embedded(api: str, request: Mapping[str, Any], response: Mapping[str, Any]) -> list[Embedded]:
    """Each input of a call with its text and vector; inputs without a readable vector are left out."""
    texts = request_texts(api, request)
    out: list[Embedded] = []
    for index, vector in enumerate(response_vectors(api, response)):
        if vector is not None:
            out.append(Embedded(index, texts[index] if index < len(texts) else None, vector))
    return out


# --- the log's compact form -----------------------------------------------------------------------

#: How `compact_response` left a response's vectors (the log notes it beside the record).
PACKED: Final = "float32"
DROPPED: Final = "dropped"


def compact_response(api: str, response: dict[str, Any], *, keep: bool = True) -> str | None:
    """Make `response`'s vectors compact, in place; returns what was done, or None (nothing).

    With `keep`, float lists become base64 float32 strings (`PACKED`; base64 vectors, OpenAI's
    default, are already compact and stay as sent). Without it every vector becomes null
    (`DROPPED`).
    """
    done: str | None = None
    for holder, key, value in vector_slots(api, response):
        if not keep:
            if value is not None:
                holder[key] = None
                done = DROPPED
        elif isinstance(value, list) and (packed := _f32(value)) is not None:
            holder[key] = base64.b64encode(packed).decode("ascii")
            done = PACKED
    return done


def expand_response(api: str, response: dict[str, Any]) -> None:
    """Undo `compact_response(keep=True)`, in place: base64 float32 strings become float lists.

    Each float is the shortest decimal that reads back as the same float32, which is how the
    providers print them: a float32 vector reads as it was sent.
    """
    for holder, key, value in vector_slots(api, response):
        if isinstance(value, str) and (raw := _f32(value)) is not None:
            # orjson prints a float32 as its shortest decimal; read back, that is a Python float
            # whose repr is the same (6× faster than formatting each float in Python).
            import numpy as np  # only when reading the log, never in the proxy

            vector = np.frombuffer(raw, dtype="<f4")
            holder[key] = orjson.loads(orjson.dumps(vector, option=orjson.OPT_SERIALIZE_NUMPY))
