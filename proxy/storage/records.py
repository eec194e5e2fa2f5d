"""The recording: one request's canonical form and the response it got, and its binary encoding.

All encoding lives here (`pack`/`unpack`), versioned from day one; `to_meta`/`from_meta` map a
recording's fields for this format and the export format alike. A packed recording is
`MAGIC`, a codec byte, two 4-byte big-endian lengths, then (compressed as one when that helps)
the metadata as JSON, the canonical request as JSON and the decoded response body as raw bytes:
bodies of any size or encoding cost no base64, a replay need not parse the (possibly long)
request, and a typical recording fits one LMDB page instead of spilling onto overflow pages.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from llmreel.core.wire import header
from llmreel.storage.compress import CompressionError, compress, decompress

#: Bump when the packed layout or the meaning of a field changes; the store refuses other versions.
SCHEMA_VERSION = 1
MAGIC = b"LRR2"
_HEADER = struct.Struct(">4sBII")
_COMPRESS_FROM = 1024  # bytes; smaller values fit a page as they are


class RecordError(ValueError):
    """A stored value that cannot be decoded."""


@dataclass(slots=True)
class Recording:
    """A recorded exchange: what was asked (canonically) and what came back."""

    key: str
    """Digest of `request` (see `proxy.keys`)."""
    namespace: str
    """Cache scope, from `llmreel-namespace` (per test, per team...)."""
    request: dict[str, Any]
    """The canonical request: method, scheme, host, port, path, query, keyed headers, body."""
    status: int
    headers: list[tuple[str, str]]
    """Response headers as recorded, minus hop-by-hop, framing and credential headers."""
    body: bytes
    """The response body, content-decoded. For streams, every byte as the client received it."""
    chunks: list[tuple[float, int]] = field(default_factory=list)
    """For streams: (seconds since the request was sent, byte length) of each chunk received."""
    recorded_at: float = 0.0
    """Unix time the recording was made."""
    provider: str | None = None
    model: str | None = None
    usage: dict[str, int] | None = None
    duration_s: float | None = None
    ttfc_s: float | None = None
    """Time to first response byte (streams), from the request being sent."""
    seq: int = 0
    """Occurrence number of this identical request (sequence mode); 0 otherwise."""

    @property
    def is_stream(self) -> bool:
        return bool(self.chunks)

    def content_type(self) -> str:
        return header(self.headers, "content-type") or ""


def to_meta(rec: Recording) -> dict[str, Any]:
    """The metadata of `rec`: every field but `request` and `body`, as stored (no conversion).

    The one mapping of a recording's fields: the packed form stores it as it is, the export
    format spreads it over its document (`proxy.storage.export`). Key order is stored order.
    """
    return {
        "key": rec.key,
        "namespace": rec.namespace,
        "status": rec.status,
        "headers": rec.headers,
        "chunks": rec.chunks,
        "recorded_at": rec.recorded_at,
        "provider": rec.provider,
        "model": rec.model,
        "usage": rec.usage,
        "duration_s": rec.duration_s,
        "ttfc_s": rec.ttfc_s,
        "seq": rec.seq,
    }


def from_meta(meta: Mapping[str, Any], *, request: dict[str, Any], body: bytes) -> Recording:
    """The recording `to_meta` gave `meta` for; `seq` may be missing (0).

    Raises KeyError for a missing field, TypeError or ValueError for one of the wrong type.
    """
    return Recording(
        key=_text(meta["key"], "key"),
        namespace=_text(meta["namespace"], "namespace"),
        request=request,
        status=int(meta["status"]),
        headers=[(str(name), str(value)) for name, value in meta["headers"]],
        body=body,
        chunks=[(float(t), int(n)) for t, n in meta["chunks"]],
        recorded_at=meta["recorded_at"],
        provider=meta["provider"],
        model=meta["model"],
        usage=meta["usage"],
        duration_s=meta["duration_s"],
        ttfc_s=meta["ttfc_s"],
        seq=int(meta.get("seq", 0)),
    )


def _text(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a string")
    return value


def pack(rec: Recording) -> bytes:
    encoded = orjson.dumps({"v": SCHEMA_VERSION, **to_meta(rec)})
    request = orjson.dumps(rec.request)
    codec, payload = compress(encoded + request + rec.body, minimum=_COMPRESS_FROM)
    return _HEADER.pack(MAGIC, codec, len(encoded), len(request)) + payload


def unpack(data: bytes | memoryview, *, request: bool = True) -> Recording:
    """Decode a packed recording; raises `RecordError` saying what is wrong.

    With `request=False` the canonical request is not parsed (`.request` is empty): a replay
    needs only the response.
    """
    if len(data) < _HEADER.size:
        raise RecordError("value too short to be a recording")
    magic, codec, meta_length, request_length = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise RecordError(f"unknown recording format {bytes(magic)!r}")
    try:
        view = memoryview(decompress(codec, memoryview(data)[_HEADER.size :]))
    except CompressionError as exc:
        raise RecordError(f"recording content is corrupt: {exc}") from exc
    meta_end = meta_length
    end = meta_end + request_length
    if end > len(view):
        raise RecordError("recording metadata is truncated")
    try:
        meta = orjson.loads(view[:meta_end])
        if meta["v"] != SCHEMA_VERSION:
            raise RecordError(f"recording schema {meta['v']}, expected {SCHEMA_VERSION}")
        canonical = orjson.loads(view[meta_end:end]) if request else {}
        return from_meta(meta, request=canonical, body=bytes(view[end:]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, RecordError):
            raise
        raise RecordError(f"recording metadata is corrupt: {exc}") from exc
