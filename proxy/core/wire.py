"""HTTP details of recording and replaying: which headers are kept, and the stream tee. Pure."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable

from llmreel.core.credentials import is_secret_header

#: Request headers that steer llmreel itself; removed before the request goes upstream.
CONTROL_HEADER = "llmreel-cache"
NAMESPACE_HEADER = "llmreel-namespace"
KEY_HEADER = "llmreel-key"

# Not worth replaying: framing (recomputed on replay), connection management, and volatile or
# per-client values. Credentials (set-cookie...) are dropped by `is_secret_header`.
_DROPPED_RESPONSE_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
        "content-encoding",
        "date",
        "alt-svc",
        "strict-transport-security",
        "llmreel-cache",
        "llmreel-key",
        "llmreel-namespace",
    }
)


def recordable_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Response headers worth storing: no framing, no hop-by-hop, no credentials."""
    return [
        (name, value)
        for name, value in headers
        if name.lower() not in _DROPPED_RESPONSE_HEADERS and not is_secret_header(name)
    ]


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_event_stream(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "text/event-stream"


class StreamTee:
    """The `flow.response.stream` callable: passes every chunk through unchanged, and keeps it.

    mitmproxy calls it once per received chunk and finally with b"". It must never raise: an
    exception there silently drops the chunk on its way to the client.
    """

    __slots__ = ("_clock", "_start", "chunks", "first_chunk_at", "parts", "size")

    def __init__(self, start: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.parts: list[bytes] = []
        self.chunks: list[tuple[float, int]] = []
        self.first_chunk_at: float | None = None
        self.size = 0
        self._start = start
        self._clock = clock

    def __call__(self, data: bytes) -> bytes:
        if data:
            try:
                now = self._clock()
                if self.first_chunk_at is None:
                    self.first_chunk_at = now
                self.parts.append(data)
                self.chunks.append((round(now - self._start, 6), len(data)))
                self.size += len(data)
            except Exception:  # noqa: BLE001,S110 - the client's bytes matter more than our copy
                pass
        return data

    def body(self) -> bytes:
        return b"".join(self.parts)
