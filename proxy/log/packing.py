"""The exchange log's stored form: a record's head as JSON, then its raw bodies, compressed.

A packed record is `MAGIC_RAW`, a codec byte, the head's length (4 bytes, big-endian), the head
as JSON, then the (scrubbed) request and response bodies as received, compressed as one. Listing,
filtering and stats read only the head (a few hundred bytes, no decompression); `get` and --grep
decompress the rest and build the record's content then. A hit's record may refer to the
recording it replayed instead of holding its response body (`response_ref` in the head's raw
part: namespace, key, seq and recorded_at); records without it hold both bodies, as records
written before it did. Pure functions, no I/O: the caller reads a referred recording.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import orjson

from llmreel.core.exchange import RecordingRef
from llmreel.core.redact import KEY_HINTS, scrub_text
from llmreel.log.record import MAX_BODY_BYTES, exchange_head, record_content
from llmreel.log.vectors import expand_vectors, pack_vectors
from llmreel.providers import Endpoint
from llmreel.providers.embeddings import EMBEDDING_APIS
from llmreel.storage.compress import CompressionError, compress, decompress

if TYPE_CHECKING:
    from llmreel.core.exchange import Exchange

__all__ = [
    "MAGIC_RAW",
    "LogRecordError",
    "Recorded",
    "pack_exchange",
    "unpack_content",
    "unpack_head",
    "unpack_record",
]

#: The body of the recording a reference names, if the store holds that version of it.
type Recorded = Callable[[RecordingRef], bytes | None]

#: Records stored by `pack_exchange`: the head, then the raw (scrubbed) bodies, compressed.
MAGIC_RAW: Final = b"LXR1"
_PREFIX: Final = struct.Struct(">4sBI")
_BYTE_HINTS: Final = tuple(hint.encode() for hint in KEY_HINTS)


class LogRecordError(ValueError):
    """A stored log value that cannot be decoded."""


def pack_exchange(
    ex: Exchange, *, embeddings: bool = True, recorded: Recorded | None = None
) -> bytes:
    """The stored form of `ex`, made cheaply on the proxy's event loop.

    Only the head is built now. The bodies are stored as received, scrubbed of key-shaped
    strings and compressed; parsing them (JSON, SSE events, the assembled answer) is left to
    the reader (`unpack_record`), so a busy proxy pays microseconds, not a parse, per exchange.
    Embedding responses keep their vectors as float32, or none without `embeddings`
    (`llmreel.log.vectors`).

    A hit's response body is the body of the recording it replayed: when `recorded` finds that
    very body in the store, the record refers to the recording (`response_ref`) instead of
    holding a copy, and `unpack_record` reads it back from there. (Not for embedding calls:
    their records keep the compact vectors, or none, as the switch says.)
    """
    head = exchange_head(ex)
    request_body = _scrub_bytes(ex.request_body[:MAX_BODY_BYTES])
    raw: dict[str, Any] = {
        # Exchange headers are masked by their producer (`mask_headers`, which also scrubs).
        "request_headers": ex.request_headers,
        "response_headers": ex.response_headers,
        "request_len": len(request_body),
        "otel_provider": ex.endpoint.otel_provider,
    }
    ref = ex.replayed
    if (
        ref is not None
        and recorded is not None
        and ex.endpoint.api not in EMBEDDING_APIS
        and recorded(ref) == ex.response_body
    ):
        raw["response_ref"] = [ref.namespace, ref.key, ref.seq, ref.recorded_at]
        payload = request_body
    else:
        response_body, vectors = pack_vectors(ex.endpoint.api, ex.response_body, keep=embeddings,
                                              scrub=_scrub_bytes, limit=MAX_BODY_BYTES)  # fmt: skip
        if vectors is not None:
            raw["vectors"] = vectors
        payload = request_body + response_body
    head["_raw"] = raw
    head_json = orjson.dumps(head, default=str)
    codec, packed = compress(payload)
    return _PREFIX.pack(MAGIC_RAW, codec, len(head_json)) + head_json + packed


def _scrub_bytes(body: bytes) -> bytes:
    if not any(hint in body for hint in _BYTE_HINTS):
        return body  # the common case: nothing key-shaped, no decode and re-encode
    try:
        return scrub_text(body.decode("utf-8")).encode("utf-8")
    except UnicodeDecodeError:
        # latin-1 maps bytes to code points one to one: ASCII key shapes are masked, nothing
        # else changes.
        return scrub_text(body.decode("latin-1")).encode("latin-1", "replace")


def unpack_record(
    data: bytes, *, heavy: bool = True, recorded: Recorded | None = None, vectors: bool = True
) -> dict[str, Any]:
    """A record from its stored form; with `heavy=False` only the head (no headers or bodies).

    `recorded` reads the body of a recording a hit's record refers to (see `pack_exchange`).
    Without it, or when that recording is gone or was recorded again since, the response body
    is empty and `response_body_missing` says why.

    With `vectors=False`, an embedding response's vectors stay as the log keeps them (base64
    float32 strings) rather than float lists: much faster to read many of.
    """
    record = _head(data)
    raw = record.pop("_raw", None)
    if not heavy:
        return record
    if raw is None:
        raise LogRecordError("record content is missing")
    bodies = unpack_content(data)
    split = int(raw["request_len"])
    request_body, response_body = bodies[:split], bodies[split:]
    missing = None
    if "response_ref" in raw:
        namespace, key, seq, recorded_at = raw["response_ref"]
        found = recorded(RecordingRef(namespace, key, int(seq), recorded_at)) if recorded else None
        if found is None:
            missing = (
                f"the response was replayed from recording {key} (namespace {namespace!r}), "
                "which is no longer in the store as it was: its body is not in the log"
            )
        response_body = _scrub_bytes(found[:MAX_BODY_BYTES]) if found is not None else b""
    endpoint = Endpoint(
        record["provider"], record["api"], record["operation"], raw["otel_provider"]
    )
    record["request_headers"] = raw["request_headers"]
    record["response_headers"] = raw["response_headers"]
    record.update(record_content(endpoint, request_body, response_body, raw["request_headers"],
                                 raw["response_headers"], None))  # fmt: skip
    if vectors:
        expand_vectors(record, raw.get("vectors"))
    if record.get("finish_reason") is None and record["assembled"] is not None:
        record["finish_reason"] = record["assembled"]["finish_reason"]
    if missing is not None:
        record["response_body_missing"] = missing
    return record


def unpack_head(data: bytes) -> dict[str, Any]:
    """The head of a stored record: every field but `HEAVY_FIELDS`."""
    head = _head(data)
    head.pop("_raw", None)
    return head


def _head(data: bytes) -> dict[str, Any]:
    _, head_len = _prefix(data)
    try:
        head: dict[str, Any] = orjson.loads(data[_PREFIX.size : _PREFIX.size + head_len])
    except orjson.JSONDecodeError as exc:
        raise LogRecordError(f"bad record head: {exc}") from exc
    return head


def unpack_content(data: bytes) -> bytes:
    """The raw bodies of a stored record, request then response (decompressed, not parsed)."""
    codec, head_len = _prefix(data)
    try:
        return decompress(codec, data[_PREFIX.size + head_len :])
    except CompressionError as exc:
        raise LogRecordError(f"bad record content: {exc}") from exc


def _prefix(data: bytes) -> tuple[int, int]:
    if len(data) < _PREFIX.size:
        raise LogRecordError("too short to be a log record")
    magic, codec, head_len = _PREFIX.unpack_from(data)
    if magic != MAGIC_RAW:
        raise LogRecordError(f"unknown log record format {magic!r}")
    return int(codec), int(head_len)
