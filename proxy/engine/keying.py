"""A request's key, canonical form, model and streaming flag, remembered by what determines them.

Keying a request parses its JSON body, builds the canonical form and hashes it sorted: tens of
microseconds for an ordinary chat request, on the event loop, for every request. A replayed
request (the whole point of a cache) arrives with a body seen before, so `Keyer` remembers the
result by exactly the inputs `canonical_request` reads: the endpoint, method, scheme, host,
port, path, the query, the values of the keyed headers and the body bytes. A request that
matches all of them gets the very same key; anything else is keyed afresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from llmreel.core.bounded import BoundedCache
from llmreel.core.keys import KeyConfig, canonical_request, parse_body, request_digest
from llmreel.providers import Endpoint, request_model, wants_stream

__all__ = ["KEYED_BYTES", "Head", "Keyed", "Keyer"]

#: Memory for remembered keys: each holds its request body and canonical form. Counted as the
#: body's size, while the parsed canonical form costs several times that in Python objects: at
#: 16 MiB a proxy taking thousands of distinct misses grew by ~60 MiB of heap (bench/run's RSS).
KEYED_BYTES = 4 << 20
_OVERHEAD = 512


class Head(Protocol):
    """What keying reads of a request (`llmreel.engine.RequestHead` has it)."""

    @property
    def method(self) -> str: ...
    @property
    def scheme(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def path(self) -> str: ...
    @property
    def query(self) -> list[tuple[str, str]]: ...
    @property
    def headers(self) -> list[tuple[str, str]]: ...


@dataclass(frozen=True, slots=True)
class Keyed:
    """What keying a request found. `canonical` is shared between requests: never modify it."""

    canonical: dict[str, Any]
    key: str
    model: str | None
    stream: bool


class Keyer:
    """Keys requests (see `llmreel.core.keys`), remembering the last few megabytes of them."""

    def __init__(self, config: KeyConfig, max_bytes: int = KEYED_BYTES) -> None:
        self.config = config
        self._cache: BoundedCache[tuple[Any, ...], Keyed] = BoundedCache(max_bytes)

    def key(self, endpoint: Endpoint, head: Head, body: bytes) -> Keyed:
        """The key of a request to `endpoint` with this head and (content-decoded) body."""
        method, scheme, host, port, path = head.method, head.scheme, head.host, head.port, head.path
        keyed_headers = self.config.key_headers
        kept = tuple(pair for pair in head.headers if pair[0].lower() in keyed_headers)
        query = head.query
        inputs = (endpoint, method, scheme, host, port, path, tuple(query), kept, body)
        found = self._cache.get(inputs)
        if found is not None:
            return found
        parsed = parse_body(body)
        canonical = canonical_request(
            method, scheme, host, port, path, query, kept, body, self.config, parsed_body=parsed
        )
        found = Keyed(
            canonical=canonical,
            key=request_digest(canonical),
            # Behaviour is read from the body as sent: --ignore-field changes only the key.
            model=request_model(endpoint, path, parsed),
            stream=wants_stream(endpoint, path, "", parsed),
        )
        self._cache.put(inputs, found, 3 * len(body) + _OVERHEAD)
        return found
