"""The exchange log's retention: entries past their age are deleted, in batches, in a thread.

Ids sort by creation time (`proxy.core.ids`), so "older than T" is the range of keys below
`id_floor(T)`: pruning never decodes an entry.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Final, Protocol

from llmreel.core.ids import id_floor
from llmreel.storage.lmdbstore import Value

__all__ = ["PRUNE_INTERVAL_S", "PrunableStore", "Retention"]

log = logging.getLogger(__name__)

#: How often new entries start a background prune of those past retention.
PRUNE_INTERVAL_S: Final = 3600.0
# Small enough that no write transaction holds the writer (and the proxy's writes) for long.
_PRUNE_BATCH: Final = 1000
_PRUNE_WAIT_S: Final = 60.0


class PrunableStore(Protocol):
    """What pruning needs from a store (`proxy.storage.lmdbstore.LmdbStore` provides it)."""

    def iter_raw(
        self, db: bytes, *, prefix: bytes = b"", start: bytes | None = None, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]: ...
    def write_raw(self, writes: list[tuple[bytes, bytes, bytes | None]]) -> None: ...
    def submit_raw(
        self, writes: Sequence[tuple[bytes, bytes, Value]], *, size: int | None = None
    ) -> concurrent.futures.Future[None]: ...


class Retention:
    """Keeps database `db` of `store` to `retention_s` (None: kept forever).

    `entry_added` is called for each new entry; at most every `interval_s` it starts a prune in a
    background thread, so the caller (the proxy's event loop) never waits for deletes.
    """

    def __init__(
        self,
        store: PrunableStore,
        db: bytes,
        *,
        retention_s: float | None,
        clock: Callable[[], float] = time.time,
        interval_s: float = PRUNE_INTERVAL_S,
        keep: Callable[[], set[bytes]] | None = None,
    ) -> None:
        self.store = store
        #: Keys that are kept however old they are (labelled exchanges), read once per prune.
        self._keep = keep
        self.db = db
        self.retention_s = retention_s if retention_s and retention_s > 0 else None
        self._clock = clock
        self._interval_s = interval_s
        self._next_prune = 0.0  # the first entry prunes what piled up while no proxy ran
        self._pruner: threading.Thread | None = None

    def entry_added(self) -> None:
        """Start a background prune if one is due (and none is running)."""
        if self.retention_s is None or self._clock() < self._next_prune:
            return
        self._next_prune = self._clock() + self._interval_s
        if self._pruner is not None and self._pruner.is_alive():
            return
        self._pruner = threading.Thread(target=self._background_prune, name="llmreel-log-prune")
        self._pruner.daemon = True
        self._pruner.start()

    def _background_prune(self) -> None:
        try:
            removed = self.prune(background=True)
        except Exception as exc:  # noqa: BLE001 - a thread's error would otherwise vanish
            log.warning("exchange log prune failed: %s", exc)
            return
        if removed:
            log.info("exchange log: removed %d entries older than the retention", removed)

    def prune(self, older_than_s: float | None = None, *, background: bool = False) -> int:
        """Delete entries that ended more than `older_than_s` (default: the retention) ago.

        Returns how many were removed. Deletes go in batches so that no write transaction holds
        the writer for long; with `background=True` they queue behind the proxy's own writes.
        """
        age = older_than_s if older_than_s is not None else self.retention_s
        if age is None:
            return 0
        floor = id_floor(self._clock() - age).encode()
        kept = self._keep() if self._keep is not None else set()
        removed = 0
        while True:
            batch = list(itertools.islice(self._keys_before(floor, kept), _PRUNE_BATCH))
            if not batch:
                return removed
            writes: list[tuple[bytes, bytes, bytes | None]] = [(self.db, k, None) for k in batch]
            if background:
                self.store.submit_raw(writes).result(timeout=_PRUNE_WAIT_S)
            else:
                self.store.write_raw(writes)
            removed += len(batch)

    def _keys_before(self, floor: bytes, kept: set[bytes]) -> Iterator[bytes]:
        for key, _ in self.store.iter_raw(self.db):
            if key >= floor:
                return
            if key not in kept:
                yield key

    def join(self, timeout: float | None = None) -> None:
        """Wait for a running background prune to finish."""
        pruner = self._pruner
        if pruner is not None:
            pruner.join(timeout)
