"""Memory bounded by design: collections fed with values taken from the wire.

Hosts, models and keys come from clients. A set that remembers "already warned about this one"
must not grow with traffic, so it forgets its oldest entries past a cap.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedSet[K: Hashable]:
    """Remembers at most `cap` values, forgetting the oldest first."""

    __slots__ = ("_cap", "_items")

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._items: dict[K, None] = {}

    def first_time(self, value: K) -> bool:
        """True the first time `value` is seen (or the first time since it was forgotten)."""
        if value in self._items:
            return False
        if len(self._items) >= self._cap:
            del self._items[next(iter(self._items))]
        self._items[value] = None
        return True

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, value: object) -> bool:
        return value in self._items


class BoundedCounter[K: Hashable]:
    """Counts occurrences of at most `cap` values; past the cap the oldest counts are forgotten
    (so that value starts again at 0). `overflowed` says whether that ever happened."""

    __slots__ = ("_cap", "_counts", "overflowed")

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._counts: dict[K, int] = {}
        self.overflowed = False

    def next(self, value: K) -> int:
        """The number of times `value` was counted before this call; counts this one."""
        seen = self._counts.get(value, 0)
        if not seen and len(self._counts) >= self._cap:
            del self._counts[next(iter(self._counts))]
            self.overflowed = True
        self._counts[value] = seen + 1
        return seen

    def __len__(self) -> int:
        return len(self._counts)

    def clear(self) -> None:
        self._counts.clear()


class BoundedCache[K: Hashable, V]:
    """A least-recently-used cache bounded by the bytes its values weigh (as the caller says)
    and by a number of entries. A value heavier than a quarter of the budget is not kept, so
    one huge value never evicts everything else."""

    __slots__ = ("_items", "_max_bytes", "_max_items", "bytes")

    def __init__(self, max_bytes: int, max_items: int = 100_000) -> None:
        self._max_bytes = max_bytes
        self._max_items = max_items
        self._items: dict[K, tuple[V, int]] = {}
        self.bytes = 0

    def get(self, key: K) -> V | None:
        found = self._items.pop(key, None)
        if found is None:
            return None
        self._items[key] = found  # most recently used: last in order
        return found[0]

    def put(self, key: K, value: V, weight: int) -> None:
        self.discard(key)
        if weight * 4 > self._max_bytes:
            return
        items = self._items
        while items and (self.bytes + weight > self._max_bytes or len(items) >= self._max_items):
            self.bytes -= items.pop(next(iter(items)))[1]
        items[key] = (value, weight)
        self.bytes += weight

    def discard(self, key: K) -> None:
        found = self._items.pop(key, None)
        if found is not None:
            self.bytes -= found[1]

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)
