"""Sequence numbers shared by processes: the occurrence counter of `--sequence` for `--workers N`.

In sequence mode the n-th identical request of a run is keyed with seq n. With several worker
processes the n-th one can reach any of them, so they count together, in a small LMDB
environment in the supervisor's private run directory (LMDB serialises the writers of all
processes; an increment is one short write transaction).
"""

from __future__ import annotations

from collections.abc import Hashable

import lmdb
import orjson

__all__ = ["SharedCounter"]


class SharedCounter:
    """The `BoundedCounter` surface (`next`, `clear`) over a file every worker opens."""

    def __init__(self, path: str) -> None:
        self._env = lmdb.open(path, map_size=64 << 20, max_dbs=0, sync=False, metasync=False)

    def next(self, value: Hashable) -> int:
        """0 the first time `value` is counted in this run, then 1, 2, ..."""
        key = orjson.dumps(value)
        with self._env.begin(write=True) as txn:
            raw = txn.get(key)
            count = int(raw) if raw is not None else 0
            txn.put(key, str(count + 1).encode())
        return count

    def clear(self) -> None:
        with self._env.begin(write=True) as txn:
            txn.drop(self._env.open_db(txn=txn), delete=False)

    def __len__(self) -> int:
        return int(self._env.stat()["entries"])

    def close(self) -> None:
        self._env.close()
