"""Responses to replayed recordings, prepared once per recording and copied for every hit.

`http.Response.make` validates every field of the message at run time (mitmproxy's `typecheck`
of its dataclass) and re-encodes the body for its content-encoding: ~50 µs per response, most of
a hit's cost over a hook that answers from memory. A hit serves the same bytes each time, so
the first hit of a recording builds its response with `Response.make`, and later hits copy that
response's fields into a new `http.Response` without running its checks again.

Prepared responses are kept in a least-recently-used cache bounded by bytes. One is reused only
for the same recording (the same status, headers and body), so a recording replaced in the
store is prepared again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from mitmproxy import http

from llmreel.core.bounded import BoundedCache
from llmreel.core.wire import tagged_headers
from llmreel.storage.records import Recording

__all__ = ["PREPARED_BYTES", "Replies"]

#: Memory for prepared responses. Their bodies are the very bytes objects of the recordings
#: the store keeps decoded, so this mostly bounds how many are kept, not new memory.
PREPARED_BYTES = 32 << 20
_OVERHEAD = 512  # a prepared response's objects besides its body


@dataclass(frozen=True, slots=True)
class _Prepared:
    rec: Recording
    fields: dict[str, Any]
    """The `http.ResponseData` fields of the response, but its headers and timestamps."""
    headers: tuple[tuple[bytes, bytes], ...]


class Replies:
    """Builds the response of a hit: `Response.make` once per recording, a copy afterwards."""

    def __init__(self, max_bytes: int = PREPARED_BYTES) -> None:
        self._cache: BoundedCache[tuple[str, str, int], _Prepared] = BoundedCache(max_bytes)

    def response(self, rec: Recording, key: str) -> http.Response:
        """The response replaying `rec`, tagged as a hit on `key`."""
        cache_key = (rec.namespace, key, rec.seq)
        prepared = self._cache.get(cache_key)
        if prepared is None or not _same(prepared.rec, rec):
            made = http.Response.make(rec.status, rec.body, tagged_headers(rec.headers, "hit", key))
            fields = dict(vars(made.data))
            headers = fields.pop("headers").fields
            prepared = _Prepared(rec, fields, headers)
            self._cache.put(cache_key, prepared, len(rec.body) + _OVERHEAD)
            return made
        return _copy(prepared)


def _same(a: Recording, b: Recording) -> bool:
    return a is b or (a.status == b.status and a.body == b.body and a.headers == b.headers)


def _copy(prepared: _Prepared) -> http.Response:
    """A new response with the prepared fields, made without `Response.__init__`'s checks
    (they passed when the response was prepared) and with fresh headers and timestamps."""
    headers = http.Headers.__new__(http.Headers)
    headers.fields = prepared.headers  # a tuple: changing the copy's headers replaces it
    data = http.ResponseData.__new__(http.ResponseData)
    now = time.time()
    vars(data).update(prepared.fields, headers=headers, timestamp_start=now, timestamp_end=now)
    response = http.Response.__new__(http.Response)
    response.data = data
    return response
