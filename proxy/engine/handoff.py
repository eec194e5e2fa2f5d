"""Calls from the store's writer thread, run on the proxy's event loop in batches.

The writer commits many recordings at once, and each commit ends a single flight on the event
loop. Waking the loop once per recording (`call_soon_threadsafe` writes to its self-pipe each
time) costs a system call on each side per recording; `LoopHandoff` wakes it once per batch:
the first call of a batch schedules a drain, the others join the batch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

__all__ = ["LoopHandoff"]

log = logging.getLogger("llmreel")


class LoopHandoff:
    """Runs `call`s made in any thread on `loop`, in order, waking the loop once per batch."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[Callable[[], None], Callable[[], None]]] = []

    def call(self, run: Callable[[], None], if_closed: Callable[[], None]) -> None:
        """Run `run` on the loop soon; if the loop has closed (shutdown), `if_closed` here."""
        with self._lock:
            self._pending.append((run, if_closed))
            if len(self._pending) > 1 and not self.loop.is_closed():
                return  # a drain is already scheduled
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop has closed: nobody on it waits any more
            for _, closed in self._take():
                closed()

    def _take(self) -> list[tuple[Callable[[], None], Callable[[], None]]]:
        with self._lock:
            pending, self._pending = self._pending, []
        return pending

    def _drain(self) -> None:
        for run, _ in self._take():
            try:
                run()
            except Exception:  # one failing call must not strand the others
                log.exception("a commit callback failed")
