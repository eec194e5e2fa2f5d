"""Which recordings can explain a miss, found without decoding the store: the endpoint index.

To say how a missed request differs from the closest recording, `llmreel.core.diff.explain`
needs recorded requests of the same endpoint. Decoding every recording of a namespace for that
made each miss cost O(store). Instead every recording has an index entry, written with it:

    key    namespace NUL endpoint-id(8 bytes) entry-key-after-the-namespace
    value  the request's sketch (`llmreel.core.diff.sketch`, at most 128 bytes)

so the recordings of one endpoint are one contiguous key range, ranked by their sketches alone;
only the few most alike are decoded. In LMDB the index is its own named database, `endpoints`
(stores written before it existed are indexed on first use), and an export directory keeps the
same entries in memory.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
from collections.abc import Iterable
from typing import Any

import orjson

from llmreel.core.diff import endpoint, likeness, sketch
from llmreel.storage.records import RecordError, unpack

__all__ = [
    "CANDIDATE_LIMIT",
    "INDEX_DB",
    "RANK_AT_MOST",
    "endpoint_id",
    "entry_key_of",
    "index_entry",
    "index_key",
    "index_prefix",
    "most_alike",
    "packed_request",
]

#: The LMDB database of the index: new beside the others, which stay as they were.
INDEX_DB = b"endpoints"
#: Candidates decoded for one miss: `closest` compares them field by field.
CANDIDATE_LIMIT = 32
#: Index entries ranked for one miss, at most (a few µs each), so that its cost has a ceiling
#: however many recordings one endpoint has. Past it, the first in key order: keys are digests,
#: so that is a random sample.
RANK_AT_MOST = 10_000
_ID_BYTES = 8
#: The endpoint id of entries that cannot be decoded: indexed all the same, so that the index
#: and the entries stay the same size (see `LmdbStore.candidates`), but never a candidate.
_UNREADABLE = bytes(_ID_BYTES)


def endpoint_id(request: dict[str, Any]) -> bytes:
    # Two endpoints sharing an id (2^-64) would only share a pool: `closest` checks the endpoint.
    return hashlib.blake2b(orjson.dumps(endpoint(request)), digest_size=_ID_BYTES).digest()


def index_prefix(namespace: str, request: dict[str, Any]) -> bytes:
    """The index key range of `request`'s endpoint in `namespace`."""
    return namespace.encode() + b"\x00" + endpoint_id(request)


def index_key(db_key: bytes, request: dict[str, Any] | None) -> bytes:
    """The index key of the entry at `db_key` (see `entry_key`); None: an unreadable entry."""
    namespace, nul, rest = db_key.partition(b"\x00")
    if not nul:  # not an llmreel key: filed under the empty namespace, which none has
        namespace, rest = b"", db_key
    eid = endpoint_id(request) if request is not None else _UNREADABLE
    return namespace + b"\x00" + eid + rest


def entry_key_of(key: bytes) -> bytes:
    """The entry key an index key stands for."""
    namespace, _, rest = key.partition(b"\x00")
    return namespace + b"\x00" + rest[_ID_BYTES:] if namespace else rest[_ID_BYTES:]


def index_entry(db_key: bytes, packed: bytes) -> tuple[bytes, bytes]:
    """(key, value) of the index entry for a packed recording stored at `db_key`."""
    request = packed_request(packed)
    return index_key(db_key, request), sketch(request) if request is not None else b""


def packed_request(packed: bytes) -> dict[str, Any] | None:
    """The canonical request of a packed recording; None if it cannot be decoded."""
    try:
        return unpack(packed).request
    except RecordError:
        return None


def most_alike[K](request: dict[str, Any], pool: Iterable[tuple[K, bytes]], limit: int) -> list[K]:
    """The keys of the `limit` (key, sketch) pairs most like `request`, best first.

    Only the first `RANK_AT_MOST` pairs of `pool` are looked at. Among equals the earlier in
    `pool` wins, so a stable pool gives a stable choice.
    """
    score = likeness(sketch(request))
    best = heapq.nlargest(
        limit, itertools.islice(pool, RANK_AT_MOST), key=lambda item: score(item[1])
    )
    return [key for key, _ in best]
