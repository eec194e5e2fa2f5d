"""Single flight: of identical requests in flight, one leader goes upstream and the rest wait.

The waiters then read the leader's recording instead of paying for the same call again. The
leader holds a `Lease`; releasing it is unconditional (the engine releases in `finally` blocks,
and a lease is also a context manager), so an error on the leader's path can never leave
followers waiting on a result that will not come. Followers learn whether the leader recorded;
if it did not, they go upstream themselves, one new leader at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from types import TracebackType
from typing import Protocol


class Lease:
    """The leader's claim on one key. `release` is idempotent; the first call wins."""

    __slots__ = ("_flights", "_future", "_key")

    def __init__(self, flights: SingleFlight, key: Hashable, future: asyncio.Future[bool]) -> None:
        self._flights = flights
        self._key = key
        self._future = future

    @property
    def released(self) -> bool:
        return self._future.done()

    def release(self, recorded: bool) -> None:
        """Wake the followers: `recorded` says whether a recording is now there to be served."""
        if self._future.done():
            return
        self._flights._drop(self._key, self._future)
        self._future.set_result(recorded)

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release(False)


class SingleFlight:
    """Leaders by key, within one event loop.

    `wait_s` bounds how long a follower waits for a leader (a stream can legitimately take
    minutes); after it, the follower goes upstream itself.
    """

    def __init__(self, wait_s: float = 600.0) -> None:
        self.wait_s = wait_s
        self._leaders: dict[Hashable, asyncio.Future[bool]] = {}

    def __len__(self) -> int:
        return len(self._leaders)

    def lead(self, key: Hashable) -> Lease | None:
        """Become the leader for `key`, or None when another request already leads it."""
        if key in self._leaders:
            return None
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._leaders[key] = future
        return Lease(self, key, future)

    async def follow(self, key: Hashable) -> bool | None:
        """Wait for the leader of `key`: None if there is none, else whether it recorded
        (False also when the wait timed out)."""
        future = self._leaders.get(key)
        if future is None:
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.wait_s)
        except TimeoutError:
            return False

    def _drop(self, key: Hashable, future: asyncio.Future[bool]) -> None:
        if self._leaders.get(key) is future:
            del self._leaders[key]


# --- beyond one event loop ------------------------------------------------------------------------


class RemoteLease(Protocol):
    """A leader's claim held outside this process (a lock file, a Redis key)."""

    def release(self) -> None:
        """Give the claim up. Must not block: schedule slow work (a network call) on the loop."""


class RemoteFlights(Protocol):
    """Single flight beyond this event loop: worker processes (a lock file) or machines (Redis).

    The engine asks each tier in turn, after it leads the local single flight. A tier that
    cannot answer (a dead Redis) must not fail the call: `lead` then returns a lease that holds
    nothing, and `held` returns False, so the request goes on upstream as if it led.
    """

    async def lead(self, key: str) -> RemoteLease | None:
        """Claim `key`, or None when another process or machine holds it."""

    async def held(self, key: str) -> bool:
        """Whether someone still holds `key` (a follower stops waiting when it is freed)."""


def flight_key(namespace: str, key: str, seq: int) -> str:
    """The one name of a flight outside the process: the same in every worker and machine."""
    return f"{namespace}\x1f{key}\x1f{seq}"
