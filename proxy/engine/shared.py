"""The shared tier (`--shared redis://...`): Redis as the second level behind the local store.

The engine calls three things, and nothing here can fail a call:

- `fetch` after a local miss: the candidate occurrences of a request, in one MGET;
- `publish` after a recording was committed locally: a background SET (a TTL from --max-age),
  never awaited by the client; its lease is released only when the SET has completed, so a
  proxy waiting on the lease finds the recording once the lease is gone;
- `lead` / `held` (a `core.singleflight.RemoteFlights`, in `Engine.extra_flights`): a lease in Redis per request, so that identical
  misses on several machines make one upstream call. `SET NX PX`, renewed every third of its
  life while the leader streams, released by compare-and-delete.

Every failure is counted in `llmreel_shared_errors_total{reason}` and logged at most once a
minute; a failure also opens the client's breaker, so Redis is skipped for a growing pause
(docs/shared.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, Final

from llmreel.core.lookup import Found, lookup
from llmreel.core.singleflight import flight_key
from llmreel.engine.options import ConfigError
from llmreel.log.throttle import ThrottledLog
from llmreel.metering.metrics import Metrics
from llmreel.storage.records import Recording
from llmreel.storage.shared import (
    SharedClient,
    SharedError,
    check_url,
    decode,
    encode,
    lease_key,
    masked,
    new_token,
    shared_salt,
    ttl_ms,
)

if TYPE_CHECKING:
    from llmreel.engine.flowstate import FlowState
    from llmreel.storage.lmdbstore import Store

log = logging.getLogger("llmreel")

#: A lease lives this long unless renewed: how long followers wait for a leader that crashed.
LEASE_TTL_MS: Final = 10_000
#: Sequence mode looks back through at most this many earlier occurrences in one MGET.
MAX_SEQ_LOOKBACK: Final = 64

Flight = tuple[str, str, int]
OPTION_NAMES: Final = ("llmreel_shared", "llmreel_shared_timeout_ms", "llmreel_shared_max_bytes")


def configure_shared(
    tier: SharedTier | None, values: Mapping[str, Any], updated: Collection[str], metrics: Metrics
) -> SharedTier | None:
    """The tier for these option values (`tier` itself when none of its options changed)."""
    if not set(OPTION_NAMES) & set(updated):
        return tier
    url = str(values["llmreel_shared"] or "").strip()
    timeout_ms, max_bytes = (
        int(values["llmreel_shared_timeout_ms"]),
        int(values["llmreel_shared_max_bytes"]),
    )
    if timeout_ms <= 0:
        raise ConfigError("llmreel_shared_timeout_ms: must be a positive number of milliseconds")
    if max_bytes <= 0:
        raise ConfigError("llmreel_shared_max_bytes: must be a positive number of bytes")
    if url:
        try:
            check_url(url)
        except ValueError as exc:
            raise ConfigError(f"llmreel_shared: {exc}") from exc
    if tier is not None:
        tier.close_soon()
    if not url:
        return None
    client = SharedClient(url, timeout_s=timeout_ms / 1000, max_bytes=max_bytes)
    log.info(
        "shared tier: %s (timeout %d ms, values up to %d bytes)", masked(url), timeout_ms, max_bytes
    )
    tier = SharedTier(client, metrics)
    tier.warm_up()
    return tier


async def lookup_shared(
    tier: SharedTier,
    store: Store,
    state: FlowState,
    found: Found[Recording],
    local: Mapping[int, Recording | None],
    *,
    max_age_s: float | None,
    now: float,
) -> Found[Recording]:
    """The local answer `found`, or a better one from Redis: for a miss, for an earlier
    occurrence served in place of this one (sequence mode), for a stale recording. A recording
    Redis answers with is copied into the local store by its writer.

    `local` holds what the local lookup read, by seq; the lookup policy runs again over both
    levels (the newer recording of an occurrence wins) without reading the local store again.
    """
    rec = found.recording
    if rec is not None and rec.seq == state.seq and found.stale_age_s is None:
        return found
    replay_only = not state.plan.forward
    remote = await tier.fetch(state.namespace, state.key, state.seq, look_back=replay_only)
    if remote is None:
        return found

    def either(seq: int) -> Recording | None:
        mine, theirs = local.get(seq), remote.get(seq)
        if mine is None or theirs is None:
            return mine or theirs
        return theirs if theirs.recorded_at > mine.recorded_at else mine

    merged = lookup(either, state.seq, replay_only=replay_only, max_age_s=max_age_s, now=now)
    chosen = merged.recording
    from_redis = chosen is not None and any(chosen is r for r in remote.values())
    if from_redis or not state.shared_missed:  # a follower polls: its miss counts once
        tier.counted(from_redis)
        state.shared_missed = not from_redis
    if from_redis and chosen is not None:
        _copy(store, chosen)
    return merged


def _copy(store: Store, rec: Recording) -> None:
    try:
        store.submit(rec).add_done_callback(_ignore)
    except Exception as exc:  # noqa: BLE001 - a copy is an optimisation; the hit is served
        log.debug("could not copy a shared recording into the local store: %s", exc)


def _ignore(done: Any) -> None:
    done.exception()  # retrieved, so no "exception never retrieved"; the writer counted it


class SharedLease:
    """This process's lease on one request in Redis; renewed until `release`.

    `release` is synchronous and idempotent: it schedules the compare-and-delete on the loop,
    after this flight's pending Redis write (so followers that see the lease gone find the
    recording)."""

    def __init__(self, tier: SharedTier, flight: str, name: str, token: str) -> None:
        self._tier = tier
        self._flight = flight
        self._name = name
        self._token = token
        self._renewer = asyncio.get_running_loop().create_task(self._renew())
        self._released = False

    async def _renew(self) -> None:
        client = self._tier.client
        while True:
            await asyncio.sleep(LEASE_TTL_MS / 3000)
            with contextlib.suppress(SharedError):
                if not await self._tier.timed(
                    "lease", client.renew(self._name, self._token, LEASE_TTL_MS)
                ):
                    return  # lost (expired while Redis was away): the next leader has it

    def release(self, recorded: bool = False) -> None:
        if self._released:
            return
        self._released = True
        self._renewer.cancel()
        self._tier.spawn(self._release())

    async def _release(self) -> None:
        pending = self._tier.pending.get(self._flight)
        if pending is not None:
            with contextlib.suppress(Exception):
                await pending
        with contextlib.suppress(SharedError):
            await self._tier.timed("lease", self._tier.client.release(self._name, self._token))


class _NoLease:
    """What `lead` returns when Redis cannot be asked: this process goes upstream itself."""

    def release(self, recorded: bool = False) -> None:
        return None


class SharedTier:
    """Recordings and leases in Redis for one engine; create it inside the running loop."""

    def __init__(self, client: SharedClient, metrics: Metrics,
                 wall: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.client = client
        self.metrics = metrics
        self.max_age_s: float | None = None
        self._wall = wall
        self._errors = ThrottledLog(log)
        self._tasks: set[asyncio.Task[None]] = set()
        self.pending: dict[str, asyncio.Task[None]] = {}
        """Redis writes in progress, by flight: a lease is released after its write."""

    @property
    def url(self) -> str:
        return masked(self.client.url)

    # --- plumbing -----------------------------------------------------------------------------

    async def timed[T](self, op: str, work: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            return await work
        except SharedError as exc:
            self.failed(exc)
            raise
        finally:
            self.metrics.shared_seconds.labels(op).observe(time.perf_counter() - started)

    def failed(self, exc: SharedError) -> None:
        if exc.reason == "skipped":
            return
        self.metrics.shared_errors.labels(exc.reason).inc()
        self._errors.error(
            "shared tier %s: %s; going on with the local store and the upstream (retrying Redis "
            "after %.1f s)", self.url, exc, self.client.breaker.backoff_s,
        )  # fmt: skip

    def spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        async def run() -> None:
            await work

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- recordings ---------------------------------------------------------------------------

    async def fetch(
        self, namespace: str, key: str, seq: int, *, look_back: bool
    ) -> dict[int, Recording] | None:
        """The recordings Redis has for occurrence `seq` (and, with `look_back`, the earlier
        ones), by seq; None when it cannot be asked."""
        if not self.client.available:
            return None
        seqs = list(range(seq, max(seq - MAX_SEQ_LOOKBACK, -1), -1)) if look_back else [seq]
        try:
            values = await self.timed("get", self.client.get_many(namespace, key, seqs))
        except SharedError:
            return None
        found: dict[int, Recording] = {}
        for s, value in values.items():
            try:
                found[s] = decode(value)
            except SharedError as exc:
                self.failed(exc)
        return found

    def counted(self, hit: bool) -> None:
        (self.metrics.shared_hits if hit else self.metrics.shared_misses).inc()

    def publish(self, rec: Recording, flight: Flight | None = None) -> None:
        """Write `rec` to Redis in the background (after its local commit); a lease on
        `flight` is released after the write."""
        pending = flight_key(*flight) if flight is not None else None
        if not self.client.available:
            return
        try:
            value = encode(rec, self.client.max_bytes)
        except SharedError as exc:
            self.failed(exc)
            return
        ttl = ttl_ms(rec, self.max_age_s, self._wall())
        if ttl is not None and ttl <= 0:
            return

        async def write() -> None:
            try:
                await self.timed("put", self.client.put(rec, value, ttl))
                self.metrics.shared_writes.inc()
            except SharedError:
                pass
            finally:
                if pending is not None and self.pending.get(pending) is task:
                    del self.pending[pending]

        task = self.spawn(write())
        if pending is not None:
            self.pending[pending] = task

    # --- single flight across machines (the RemoteFlights shape) -------------------------------

    async def lead(self, flight: str) -> SharedLease | _NoLease | None:
        """A lease on `flight`, or None when another process holds it. When Redis cannot be
        asked, a lease that holds nothing: going upstream is better than waiting."""
        if not self.client.available:
            return _NoLease()
        name, token = _lease_name(flight), new_token()
        try:
            won = await self.timed("lease", self.client.acquire(name, token, LEASE_TTL_MS))
        except SharedError:
            # The SET may have reached Redis before the timeout: drop it if it did, or others
            # would wait out its life for a leader that is not there.
            self.spawn(self.client.forget(name, token))
            return _NoLease()
        return SharedLease(self, flight, name, token) if won else None

    async def held(self, flight: str) -> bool:
        """Whether another process still holds the lease (False when Redis cannot be asked)."""
        if not self.client.available:
            return False
        try:
            return await self.timed("lease", self.client.exists(_lease_name(flight)))
        except SharedError:
            return False

    def warm_up(self) -> None:
        """Connect in the background, so that the first request does not pay for it."""
        with contextlib.suppress(RuntimeError):  # no loop: the first request connects
            self.spawn(self.client.ping())

    def salt(self, local: bytes) -> bytes:
        """The --scope-by-credential salt shared by every proxy on this Redis, so a credential
        has one scope everywhere; `local` when Redis cannot be reached (said in the log)."""
        try:
            return shared_salt(self.client.url, local)
        except SharedError as exc:
            log.warning("shared tier %s: cannot read the shared scope salt (%s); credential "
                        "scopes are this store's own until restart", self.url, exc)  # fmt: skip
            return local

    def close_soon(self) -> None:
        """Close in the background (finishing pending writes), if a loop runs."""
        try:
            asyncio.get_running_loop().create_task(self.close())
        except RuntimeError:
            pass

    async def close(self) -> None:
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(task), 1.0)
        await self.client.close()


def _lease_name(flight: str) -> str:
    """The Redis key of the lease on a `core.singleflight.flight_key`."""
    namespace, key, seq = flight.rsplit("\x1f", 2)
    return lease_key(namespace, key, int(seq))
