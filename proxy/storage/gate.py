"""A shared/exclusive gate: LMDB transactions run together, a map resize runs alone.

LMDB remaps its file when the map is resized (`mdb_env_set_mapsize`), so no transaction of this
process may be open at that moment: an open cursor would point into the old mapping. Every
transaction holds the gate shared; a resize (or closing the environment) holds it exclusive.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

__all__ = ["MapGate"]


class MapGate:
    """Many holders at once in shared mode, or one in exclusive mode.

    An exclusive waiter goes first: once one waits, new shared holders wait behind it, so a
    steady stream of transactions cannot starve a resize. That is also why a thread must not
    take the gate twice (it would wait for itself): doing so raises `RuntimeError` at once.
    Shared holders must therefore be short (one transaction, no callbacks, no yields).
    """

    def __init__(self) -> None:
        # A plain lock under the condition (not the default RLock): every transaction of the
        # store takes it twice, so it is on the proxy's hot path.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._holders: set[int] = set()  # threads inside, in either mode
        self._exclusive = False
        self._waiting = 0  # exclusive waiters
        self._shared = _Shared(self)

    def shared(self) -> AbstractContextManager[None]:
        """Hold the gate shared for a `with` block."""
        return self._shared

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            self._check_not_holding(me)
            self._waiting += 1
            try:
                while self._exclusive or self._holders:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._exclusive = True
            self._holders.add(me)
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._holders.discard(me)
                self._cond.notify_all()

    def _check_not_holding(self, me: int) -> None:
        if me in self._holders:
            raise RuntimeError(
                "this thread already holds the store's map gate (a nested transaction)"
            )


class _Shared:
    """`MapGate.shared()`: a plain context manager rather than a generator, which costs a few
    microseconds more per transaction. Re-entrant across threads (its state is the gate's)."""

    __slots__ = ("_gate",)

    def __init__(self, gate: MapGate) -> None:
        self._gate = gate

    def __enter__(self) -> None:
        gate = self._gate
        me = threading.get_ident()
        with gate._lock:  # the condition's lock, taken without the condition's Python wrapper
            gate._check_not_holding(me)
            while gate._exclusive or gate._waiting:
                gate._cond.wait()
            gate._holders.add(me)

    def __exit__(self, *exc: object) -> None:
        gate = self._gate
        with gate._lock:
            gate._holders.discard(threading.get_ident())
            if gate._waiting and not gate._holders:  # only an exclusive waiter waits for this
                gate._cond.notify_all()
