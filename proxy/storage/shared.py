"""The shared tier's storage side: recordings in Redis or Valkey, their keys, and a guarded client.

Key layout (docs/shared.md), all under one versioned prefix so that a future layout can live
beside this one:

    llmreel:v1:rec:<namespace>:<key>:<seq>     a packed recording (`records.pack`: versioned,
                                               zstd/zlib-compressed past 1 KiB)
    llmreel:v1:lease:<namespace>:<key>:<seq>   the single-flight lease (a random token, PX)
    llmreel:v1:salt                            the --scope-by-credential salt, shared

`<namespace>` is percent-encoded (`:`, `%` and glob characters escaped), so a namespace is one
`SCAN MATCH` pattern and never reads as two fields. Only plain commands are used (GET, MGET,
SET NX PX, EVAL of two tiny scripts, SCAN), so Redis 7 and Valkey both serve it.

`SharedClient` wraps redis-py's asyncio client: every call has a short timeout, and a failure
opens a breaker that skips Redis for a backoff period (0.5 s doubling to 30 s), so a dead
Redis costs a request nothing but a clock read. Errors leave it as `SharedError` with a
`reason` for the metrics; nothing here logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from llmreel.storage.records import RecordError, Recording, pack, unpack

LAYOUT_VERSION: Final = 1
PREFIX: Final = f"llmreel:v{LAYOUT_VERSION}:"
SALT_KEY: Final = PREFIX + "salt"
DEFAULT_TIMEOUT_S: Final = 0.05
#: Past this packed (compressed) size a recording stays in the local store only.
DEFAULT_MAX_BYTES: Final = 8 << 20
ENV_URL: Final = "LLMREEL_SHARED_URL"
#: Why a shared-tier call failed (`llmreel_shared_errors_total{reason}`).
ERROR_REASONS: Final = ("timeout", "connection", "auth", "protocol", "corrupt", "too_large")
BACKOFF_START_S: Final = 0.5
BACKOFF_CAP_S: Final = 30.0
_SAFE = "@/+=,!$&'()"  # kept as they are; `:`, `%`, `*`, `?`, `[`, `]`, `\` are escaped

# Compare-and-delete and compare-and-extend: a lease is only touched by the token that holds it.
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)
_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
)


class SharedError(Exception):
    """A shared-tier call that failed; `reason` is one of `ERROR_REASONS`."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


# --- keys -------------------------------------------------------------------------------------


def _ns(namespace: str) -> str:
    return quote(namespace, safe=_SAFE)


def recording_key(namespace: str, key: str, seq: int = 0) -> str:
    return f"{PREFIX}rec:{_ns(namespace)}:{key}:{seq}"


def lease_key(namespace: str, key: str, seq: int = 0) -> str:
    return f"{PREFIX}lease:{_ns(namespace)}:{key}:{seq}"


def recording_pattern(namespace: str | None = None) -> str:
    """A `SCAN MATCH` pattern for the recordings of `namespace` (all when None)."""
    return f"{PREFIX}rec:{_ns(namespace) + ':' if namespace is not None else ''}*"


def parse_recording_key(raw: str) -> tuple[str, str, int]:
    """(namespace, key, seq) of a `recording_key`; ValueError for anything else."""
    head = f"{PREFIX}rec:"
    if not raw.startswith(head):
        raise ValueError(f"not a recording key: {raw!r}")
    namespace, key, seq = raw[len(head) :].split(":")
    return unquote(namespace), key, int(seq)


# --- values -----------------------------------------------------------------------------------


def encode(rec: Recording, max_bytes: int) -> bytes:
    """The stored value of `rec` (the store's own packed form); `SharedError("too_large")`
    when it is over `max_bytes`."""
    value = pack(rec)
    if len(value) > max_bytes:
        raise SharedError(
            f"recording {rec.key} packs to {len(value)} bytes, over --shared-max-bytes "
            f"({max_bytes}); it stays in the local store",
            "too_large",
        )
    return value


def decode(value: bytes) -> Recording:
    try:
        return unpack(value)
    except RecordError as exc:
        raise SharedError(f"a shared recording is unreadable: {exc}", "corrupt") from exc


def ttl_ms(rec: Recording, max_age_s: float | None, now: float) -> int | None:
    """How long Redis keeps `rec` under `--max-age` (None: for ever; <= 0: already too old)."""
    if max_age_s is None:
        return None
    return int((max_age_s - (now - rec.recorded_at)) * 1000)


# --- URLs -------------------------------------------------------------------------------------


def masked(url: str) -> str:
    """`url` with its password (and user name) replaced by `***`, for logs and output."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def check_url(url: str) -> str:
    """`url` if it is a Redis URL llmreel can use; ValueError saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(
            f"{masked(url)} is not a Redis URL; use redis://HOST:PORT/DB or rediss://... "
            f"(a password goes in the URL, or put the whole URL in {ENV_URL})"
        )
    if not parts.hostname:
        raise ValueError(f"{masked(url)} has no host; use redis://HOST:PORT/DB")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"{masked(url)}: the database must be a number, e.g. redis://HOST:6379/0")
    return url


def classify(exc: BaseException) -> str:
    """The `reason` label of a failed Redis call."""
    from redis import exceptions as rexc

    if isinstance(exc, SharedError):
        return exc.reason
    if isinstance(exc, TimeoutError | rexc.TimeoutError):
        return "timeout"
    if isinstance(exc, rexc.AuthenticationError | rexc.AuthorizationError):
        return "auth"
    if isinstance(exc, rexc.ConnectionError | OSError):
        return "connection"
    return "protocol"


# --- the guarded client -----------------------------------------------------------------------


@dataclass(slots=True)
class Breaker:
    """After a failure, calls are skipped until `open_until`; the pause doubles to a cap."""

    clock: Callable[[], float] = time.monotonic
    open_until: float = 0.0
    backoff_s: float = 0.0

    @property
    def is_open(self) -> bool:
        return self.clock() < self.open_until

    def failed(self) -> None:
        self.backoff_s = min(max(self.backoff_s * 2, BACKOFF_START_S), BACKOFF_CAP_S)
        self.open_until = self.clock() + self.backoff_s

    def succeeded(self) -> None:
        self.backoff_s = 0.0
        self.open_until = 0.0


class SharedClient:
    """The recordings and leases in one Redis database, every call bounded by `timeout_s`.

    Methods raise `SharedError`; while the breaker is open they raise it at once with reason
    `skipped` (not counted as a new error: the failure that opened it was). Create it inside
    the event loop that uses it.
    """

    def __init__(self, url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 max_bytes: int = DEFAULT_MAX_BYTES, clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.url = check_url(url)
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.breaker = Breaker(clock)
        # redis-py is imported only when the tier is on: it costs a proxy's startup ~0.3 s.
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self._errors: tuple[type[BaseException], ...] = (aioredis.RedisError, OSError, TimeoutError)
        self.redis: Any = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # One quick retry: after a restart the pooled connections are dead, a fresh one is not.
            retry=Retry(NoBackoff(), 1),
            health_check_interval=0,
        )

    @property
    def available(self) -> bool:
        return not self.breaker.is_open

    async def call[T](
        self, work: Callable[[], Awaitable[T]], *, timeout_s: float | None = None
    ) -> T:
        if self.breaker.is_open:
            raise SharedError("the shared tier is backing off after an error", "skipped")
        try:
            async with asyncio.timeout(timeout_s or self.timeout_s):
                result = await work()
        except self._errors as exc:
            self.breaker.failed()
            raise SharedError(f"{type(exc).__name__}: {exc}", classify(exc)) from exc
        self.breaker.succeeded()
        return result

    async def get_many(self, namespace: str, key: str, seqs: Sequence[int]) -> dict[int, bytes]:
        """The stored values of these occurrences that exist, by seq, in one round trip."""
        names = [recording_key(namespace, key, s) for s in seqs]
        values = await self.call(lambda: self.redis.mget(names))
        return {s: v for s, v in zip(seqs, values, strict=True) if isinstance(v, bytes)}

    async def put(self, rec: Recording, value: bytes, ttl_ms: int | None) -> None:
        name = recording_key(rec.namespace, rec.key, rec.seq)
        # A large value takes longer to send than a lookup: allow for ~10 MB/s on top.
        timeout = self.timeout_s + len(value) / 10e6
        await self.call(lambda: self.redis.set(name, value, px=ttl_ms), timeout_s=timeout)

    async def acquire(self, name: str, token: str, ttl_ms: int) -> bool:
        return bool(await self.call(lambda: self.redis.set(name, token, nx=True, px=ttl_ms)))

    async def renew(self, name: str, token: str, ttl_ms: int) -> bool:
        return bool(await self.call(lambda: self.redis.eval(_RENEW, 1, name, token, ttl_ms)))

    async def release(self, name: str, token: str) -> None:
        await self.call(lambda: self.redis.eval(_RELEASE, 1, name, token))

    async def forget(self, name: str, token: str) -> None:
        """Best effort, past the breaker and with a longer timeout: release a lease whose
        acquisition timed out (it may have been set all the same)."""
        with contextlib.suppress(*self._errors):
            async with asyncio.timeout(max(1.0, self.timeout_s)):
                await self.redis.eval(_RELEASE, 1, name, token)

    async def ping(self) -> None:
        """Open a first connection (a failure only opens the breaker)."""
        with contextlib.suppress(SharedError):
            await self.call(self.redis.ping, timeout_s=max(1.0, self.timeout_s))

    async def exists(self, name: str) -> bool:
        return bool(await self.call(lambda: self.redis.exists(name)))

    async def close(self) -> None:
        await self.redis.aclose()


def new_token() -> str:
    """A lease token: who holds it (host and process) plus randomness."""
    return f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(8)}"


# --- bulk copies (`llmreel cache push|pull`), with the synchronous client -----------------------


def sync_client(url: str, timeout_s: float = 10.0) -> Any:
    import redis

    return redis.Redis.from_url(
        check_url(url), socket_timeout=timeout_s, socket_connect_timeout=timeout_s
    )


def shared_salt(url: str, local: bytes, timeout_s: float = 2.0) -> bytes:
    """The --scope-by-credential salt every proxy on this Redis uses: `local` becomes it when
    none is there yet. Synchronous: asked once, when the proxy starts."""
    import redis

    try:
        client = sync_client(url, timeout_s)
        try:
            client.set(SALT_KEY, local, nx=True)
            salt: bytes | None = client.get(SALT_KEY)
        finally:
            client.close()
    except (redis.RedisError, OSError) as exc:
        raise SharedError(f"{type(exc).__name__}: {exc}", classify(exc)) from exc
    return salt or local


def recording_names(client: Any, namespace: str | None, batch: int = 500) -> list[str]:
    """The keys of `namespace`'s recordings in Redis (all namespaces when None)."""
    names = client.scan_iter(match=recording_pattern(namespace), count=batch)
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def fetch_values(client: Any, names: Sequence[str]) -> list[tuple[str, bytes]]:
    """(key, value) of those of `names` that still exist, in one MGET."""
    return [(n, v) for n, v in zip(names, client.mget(names), strict=True) if isinstance(v, bytes)]


def write_many(client: Any, items: Iterable[tuple[Recording, bytes]]) -> int:
    """SET every (recording, value) in one pipeline; returns how many."""
    pipe = client.pipeline(transaction=False)
    count = 0
    for rec, value in items:
        pipe.set(recording_key(rec.namespace, rec.key, rec.seq), value)
        count += 1
    pipe.execute()
    return count
