"""When each recording was last served, for `cache prune --unused-since`.

Hits happen on the proxy's event loop; writing a timestamp per hit would cost a write each. The
times are batched here and handed to the store's writer thread every few seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from llmreel.storage.lmdbstore import LmdbStore, Store, entry_key

FLUSH_EVERY_S = 5.0


class UsedTimes:
    """Batches "last served" times for one store. Export directories keep none (by design:
    they are committed to git, and a timestamp per replay would dirty the work tree)."""

    def __init__(self, store: Store, *, wall: Callable[[], float] = time.time) -> None:
        self._store = store if isinstance(store, LmdbStore) else None
        self._wall = wall
        self._pending: dict[bytes, bytes] = {}
        self._flushed_at = 0.0

    def mark(self, namespace: str, key: str, seq: int) -> None:
        if self._store is None:
            return
        now = self._wall()
        self._pending[entry_key(namespace, key, seq)] = str(int(now)).encode()
        if now - self._flushed_at > FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        self._flushed_at = self._wall()
        if not self._pending or self._store is None:
            return
        writes: list[tuple[bytes, bytes, bytes | None]] = [
            (b"used", k, v) for k, v in self._pending.items()
        ]
        self._pending = {}
        self._store.submit_raw(writes)
