"""HTTP details of recording and replaying: which headers are kept, and the stream tee. Pure."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable
from urllib.parse import urlencode

from llmreel.core.credentials import is_secret_header
from llmreel.core.redact import mask_query

#: Request headers that steer llmreel itself; removed before the request goes upstream.
CONTROL_HEADER = "llmreel-cache"
NAMESPACE_HEADER = "llmreel-namespace"
KEY_HEADER = "llmreel-key"
#: Response header naming the cache outcome (`CACHE_OUTCOMES`).
CACHE_HEADER = "llmreel-cache"
#: Groups calls into one session (a thread in the UI), whatever their content.
SESSION_HEADER = "llmreel-session"
#: Every request header llmreel reads and removes before the request goes upstream.
CONTROL_HEADERS = (CONTROL_HEADER, NAMESPACE_HEADER, SESSION_HEADER)

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


def header(headers: Iterable[tuple[str, str]] | Iterable[list[str]], name: str) -> str | None:
    """The first value of header `name` (case-insensitive) in a list of (name, value) pairs."""
    lowered = name.lower()
    for pair in headers:
        if len(pair) == 2 and pair[0].lower() == lowered:
            return pair[1]
    return None


class StreamTee:
    """The `flow.response.stream` callable: passes every chunk through unchanged, and keeps it.

    mitmproxy calls it once per received chunk and finally with b"". It must never raise: an
    exception there silently drops the chunk on its way to the client. So a failure to keep a
    chunk only spoils the copy: `failed` is set, and a spoiled copy must never be recorded.
    Past `limit` bytes the copy is dropped (`overflow`), so memory stays bounded while the
    client still gets every byte.
    """

    __slots__ = (
        "_clock", "_limit", "_start", "chunks", "failed", "first_chunk_at", "overflow", "parts",
        "size",
    )  # fmt: skip

    def __init__(
        self,
        start: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        limit: int | None = None,
    ) -> None:
        self.parts: list[bytes] = []
        self.chunks: list[tuple[float, int]] = []
        self.first_chunk_at: float | None = None
        self.size = 0
        self.failed: str | None = None
        """Why the copy is incomplete, when it is (the client's stream is unaffected)."""
        self.overflow = False
        self._start = start
        self._clock = clock
        self._limit = limit

    def __call__(self, data: bytes) -> bytes:
        if data:
            try:
                self._keep(data)
            except Exception as exc:  # noqa: BLE001 - the client's bytes matter more than our copy
                self.failed = self.failed or f"{type(exc).__name__}: {exc}"
                self.parts = []
        return data

    def _keep(self, data: bytes) -> None:
        now = self._clock()
        if self.first_chunk_at is None:
            self.first_chunk_at = now
        self.size += len(data)
        if self.overflow or self.failed:
            return
        if self._limit is not None and self.size > self._limit:
            self.overflow = True
            self.parts, self.chunks = [], []  # free the copy now; the stream goes on
            return
        self.parts.append(data)
        self.chunks.append((round(now - self._start, 6), len(data)))

    @property
    def intact(self) -> bool:
        """Whether `body()` is every byte the client got."""
        return self.failed is None and not self.overflow

    def body(self) -> bytes:
        return b"".join(self.parts)


def masked_url(
    scheme: str, host: str, port: int, path: str, query: Iterable[tuple[str, str]]
) -> str:
    """The URL as logged: default ports left out, credentials in the query masked."""
    url = f"{scheme}://{host}"
    if port != {"http": 80, "https": 443}.get(scheme):
        url += f":{port}"
    url += path
    items = list(query)
    if items:
        url += "?" + urlencode(mask_query(items), safe="[] ")
    return url


def tagged_headers(
    headers: Iterable[tuple[str, str]], outcome: str, key: str
) -> list[tuple[bytes, bytes]]:
    """Headers of a response llmreel answers itself, tagged with the cache outcome and key."""
    tagged = [(k.encode(), v.encode()) for k, v in headers]
    tagged += [(CACHE_HEADER.encode(), outcome.encode()), (KEY_HEADER.encode(), key.encode())]
    return tagged
