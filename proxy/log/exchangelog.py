"""The exchange log: every LLM exchange kept in the store's `log` database, and a JSONL sink.

`ExchangeLog.append` and `JsonlSink.append` are `Recorder.sinks`: they run on the proxy's event
loop for every exchange, so they only serialise and hand the bytes on (to the store's writer
thread, or one `write` of one line). Reading (`get`, `iter`, `stats`) works from another process
while a proxy writes, on LMDB snapshots that never block the writer.

    log = ExchangeLog(store, retention_s=30 * 86400)
    recorder.sinks.append(log.append)
    for record in log.iter(LogFilter(models=("gpt-4o*",))):
        print(record["id"], record["cost_usd"])
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import IO, TYPE_CHECKING, Any, Final, Protocol

import orjson

from llmreel.log.query import LogFilter, StatsRow, stats
from llmreel.log.record import (
    LogRecordError,
    exchange_record,
    id_floor,
    pack_exchange,
    unpack_head,
    unpack_record,
)
from llmreel.storage.lmdbstore import Value

if TYPE_CHECKING:
    from llmreel.core.exchange import Exchange

__all__ = [
    "DEFAULT_RETENTION_S",
    "AmbiguousExchange",
    "ExchangeLog",
    "JsonlSink",
    "LogStore",
    "UnknownExchange",
]

log = logging.getLogger(__name__)

LOG_DB: Final = b"log"
DEFAULT_RETENTION_S: Final = 30 * 86400.0
#: How often `append` starts a background prune of entries past retention.
PRUNE_INTERVAL_S: Final = 3600.0
_PRUNE_BATCH: Final = 1000
_ERROR_REPORT_INTERVAL_S: Final = 60.0
# Crockford base32 reads I and L as 1 and O as 0, so an id read aloud or retyped still works.
_ID_FIX: Final = str.maketrans("ILO", "110")


class LogStore(Protocol):
    """What the log needs from a store (`proxy.store.LmdbStore` provides it)."""

    path: str

    def get_raw(self, db: bytes, key: bytes) -> bytes | None: ...
    def iter_raw(
        self, db: bytes, *, prefix: bytes = b"", start: bytes | None = None, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]: ...
    def count(self, db: bytes) -> int: ...
    def write_raw(self, writes: list[tuple[bytes, bytes, bytes | None]]) -> None: ...
    def submit_raw(
        self, writes: Sequence[tuple[bytes, bytes, Value]]
    ) -> concurrent.futures.Future[None]: ...
    def flush(self, timeout: float | None = None) -> None: ...


class UnknownExchange(LookupError):
    """No exchange has this id (or id prefix)."""


class AmbiguousExchange(LookupError):
    """An id prefix matches several exchanges."""

    def __init__(self, prefix: str, candidates: list[str]) -> None:
        super().__init__(
            f"{prefix!r} matches several exchanges ({', '.join(candidates)}, ...): "
            "give more characters of the id"
        )
        self.candidates = candidates


class ExchangeLog:
    """The exchanges kept in a store, newest first, pruned past `retention_s` (None: kept forever)."""

    def __init__(
        self,
        store: LogStore,
        *,
        retention_s: float | None = DEFAULT_RETENTION_S,
        clock: Callable[[], float] = time.time,
        prune_interval_s: float = PRUNE_INTERVAL_S,
    ) -> None:
        self.store = store
        self.retention_s = retention_s if retention_s and retention_s > 0 else None
        self._clock = clock
        self._prune_interval_s = prune_interval_s
        self._next_prune = 0.0  # the first append prunes what piled up while no proxy ran
        self._pruner: threading.Thread | None = None
        self._last_error_report = -_ERROR_REPORT_INTERVAL_S

    # --- writing (the proxy's event loop) -----------------------------------------------------

    def append(self, ex: Exchange) -> None:
        """Queue `ex` for the store's writer thread. Never raises: logging must not fail traffic."""
        try:
            # Packing (scrubbing, compressing) happens in the store's writer thread.
            future = self.store.submit_raw([(LOG_DB, ex.id.encode(), partial(pack_exchange, ex))])
        except Exception as exc:  # noqa: BLE001 - a bug here must cost a log line, not a request
            self._report(exc)
            return
        future.add_done_callback(self._committed)
        if self.retention_s is not None and self._clock() >= self._next_prune:
            self._next_prune = self._clock() + self._prune_interval_s
            self._prune_in_background()

    def _committed(self, future: concurrent.futures.Future[None]) -> None:
        error = future.exception()
        if error is not None:
            self._report(error)

    def _report(self, error: BaseException) -> None:
        # One line a minute: a full disk fails every write, and the proxy log must stay readable.
        now = time.monotonic()
        if now - self._last_error_report >= _ERROR_REPORT_INTERVAL_S:
            self._last_error_report = now
            log.error("exchange log entry not saved: %s", error)

    def _prune_in_background(self) -> None:
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
        removed = 0
        while True:
            batch = list(itertools.islice(self._keys_before(floor), _PRUNE_BATCH))
            if not batch:
                return removed
            writes: list[tuple[bytes, bytes, bytes | None]] = [(LOG_DB, k, None) for k in batch]
            if background:
                self.store.submit_raw(writes).result(timeout=60)
            else:
                self.store.write_raw(writes)
            removed += len(batch)

    def _keys_before(self, floor: bytes) -> Iterator[bytes]:
        for key, _ in self.store.iter_raw(LOG_DB):
            if key >= floor:
                return
            yield key

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every appended exchange is committed (and a running prune is done)."""
        self.store.flush(timeout)
        pruner = self._pruner
        if pruner is not None:
            pruner.join(timeout)

    def close(self, timeout: float | None = 10.0) -> None:
        """Finish pending writes; call before closing the store."""
        self.flush(timeout)

    # --- reading (any process) ----------------------------------------------------------------

    def get(self, id_or_prefix: str) -> dict[str, Any]:
        """The full record of an exchange, by id or by a unique prefix of it."""
        wanted = id_or_prefix.strip().upper().translate(_ID_FIX)
        if not wanted:
            raise UnknownExchange("give an exchange id; `llmreel log ls` lists them")
        raw = self.store.get_raw(LOG_DB, wanted.encode())
        if raw is None:
            found = list(itertools.islice(self.store.iter_raw(LOG_DB, prefix=wanted.encode()), 3))
            if not found:
                raise UnknownExchange(
                    f"no exchange {id_or_prefix!r} in the log at {self.store.path}: "
                    "`llmreel log ls` lists the recent ones (pass --store for another store)"
                )
            if len(found) > 1:
                raise AmbiguousExchange(id_or_prefix, [k.decode() for k, _ in found[:2]])
            raw = found[0][1]
        return unpack_record(raw)

    def iter(
        self,
        flt: LogFilter | None = None,
        *,
        newest_first: bool = True,
        content: bool = False,
        after: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Matching records, newest (or oldest) first, from one snapshot.

        Without `content` only the heads are decoded (no headers, bodies or events): listing
        and stats stay fast however large the bodies are. `after` (oldest first only) starts
        past that id. Corrupt entries are skipped with a warning.
        """
        flt = flt or LogFilter()
        full = content or flt.needs_content
        # Ids are made when an exchange ends, which is after it started: once ids fall below
        # `since`, no earlier entry can match.
        floor = id_floor(flt.since).encode() if flt.since is not None else None
        if newest_first:
            items = self.store.iter_raw(LOG_DB, reverse=True)
        else:
            start = max(floor or b"", after.encode() + b"\x00" if after else b"") or None
            items = self.store.iter_raw(LOG_DB, start=start)
        for key, value in items:
            if newest_first and floor is not None and key < floor:
                return
            try:
                record = unpack_head(value)
                if not flt.matches_head(record):
                    continue
                if full:
                    # Bodies are stored raw (see pack_exchange): a streamed answer is spread over
                    # many events, so only the expanded record can be searched.
                    record = unpack_record(value)
                    if not flt.matches_content(record):
                        continue
            except (LogRecordError, orjson.JSONDecodeError) as exc:
                log.warning("skipping corrupt log entry %r in %s: %s", key, self.store.path, exc)
                continue
            yield record

    def count(self) -> int:
        return self.store.count(LOG_DB)

    def stats(self, flt: LogFilter | None = None) -> tuple[list[StatsRow], StatsRow]:
        """Totals by provider and model, and overall (see `proxy.logquery.StatsRow`)."""
        return stats(self.iter(flt))


class JsonlSink:
    """Writes one JSON object per exchange, one per line, to a file or (`-`) standard output.

    For shipping to Loki, Elasticsearch and the like: the fields are those of
    `exchange_record`, bodies only with `bodies=True`. The file is opened for appending and
    created with mode 0600 (it may hold prompts); each line goes out in one unbuffered write,
    so a crash never leaves half a line and several proxies can share one file.
    """

    def __init__(self, path: str, *, bodies: bool = False, stdout: IO[bytes] | None = None) -> None:
        self.path = path
        self.bodies = bodies
        self._owned = path != "-"
        if self._owned:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            except OSError as exc:
                raise OSError(
                    f"cannot open the log file {path}: {exc.strerror}. "
                    "Pass another --log-file, or - for standard output."
                ) from exc
            self._out: IO[bytes] = open(fd, "ab", buffering=0)  # closed in close()
        else:
            self._out = stdout if stdout is not None else sys.stdout.buffer
        self._last_error_report = -_ERROR_REPORT_INTERVAL_S

    def append(self, ex: Exchange) -> None:
        """Write the line for `ex`. Never raises: a full disk costs log lines, not requests."""
        try:
            record = exchange_record(ex, bodies=self.bodies)
            line = orjson.dumps(record, default=str) + b"\n"
            self._out.write(line)
            if not self._owned:
                self._out.flush()
        except Exception as exc:  # noqa: BLE001 - same policy as ExchangeLog.append
            now = time.monotonic()
            if now - self._last_error_report >= _ERROR_REPORT_INTERVAL_S:
                self._last_error_report = now
                log.error("cannot write the exchange log to %s: %s", self.path, exc)

    def close(self) -> None:
        if self._owned:
            self._out.close()
