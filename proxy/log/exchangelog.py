"""The exchange log: every LLM exchange kept in the store's `log` database, newest first.

`ExchangeLog.append` is one of `Recorder.sinks`: it runs on the proxy's event loop for every
exchange, so it only hands the exchange to the store's writer thread (which packs it, see
`proxy.log.packing`). Reading (`get`, `iter`, `stats`) works from another process while a proxy
writes, on LMDB snapshots that never block the writer. Entries past the retention are deleted by
`proxy.log.retention`; `proxy.log.jsonl` is the other sink, a JSONL file.

    log = ExchangeLog(store, retention_s=30 * 86400)
    recorder.sinks.append(log.append)
    for record in log.iter(LogFilter(models=("gpt-4o*",))):
        print(record["id"], record["cost_usd"])
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Protocol

import orjson

from llmreel.core.ids import id_floor
from llmreel.log.labels import labelled_ids
from llmreel.log.packing import LogRecordError, pack_exchange, unpack_head, unpack_record
from llmreel.log.query import LogFilter, StatsRow, stats
from llmreel.log.retention import PRUNE_INTERVAL_S, PrunableStore, Retention
from llmreel.log.throttle import ThrottledLog
from llmreel.storage.lmdbstore import StoreError, Value
from llmreel.storage.records import Recording

if TYPE_CHECKING:
    from llmreel.core.exchange import Exchange, RecordingRef

__all__ = [
    "DEFAULT_RETENTION_S",
    "AmbiguousExchange",
    "ExchangeLog",
    "LogStore",
    "UnknownExchange",
]

log = logging.getLogger(__name__)

LOG_DB: Final = b"log"
DEFAULT_RETENTION_S: Final = 30 * 86400.0
# Crockford base32 reads I and L as 1 and O as 0, so an id read aloud or retyped still works.
_ID_FIX: Final = str.maketrans("ILO", "110")


class LogStore(PrunableStore, Protocol):
    """What the log needs from a store (`proxy.storage.lmdbstore.LmdbStore` provides it)."""

    path: str

    def get(
        self, namespace: str, key: str, seq: int = 0, *, request: bool = True
    ) -> Recording | None: ...
    def get_raw(self, db: bytes, key: bytes) -> bytes | None: ...
    def post_raw(
        self,
        writes: Sequence[tuple[bytes, bytes, Value]],
        *,
        size: int | None = None,
        on_error: Callable[[StoreError], None],
    ) -> None: ...
    def count(self, db: bytes) -> int: ...
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
        embeddings: bool = True,
    ) -> None:
        self.store = store
        self.embeddings = embeddings
        """Keep the vectors of embedding calls (as float32); off: stored as null."""
        self.retention = Retention(
            store, LOG_DB, retention_s=retention_s, clock=clock, interval_s=prune_interval_s,
            keep=partial(labelled_ids, store),
        )  # fmt: skip
        self._errors = ThrottledLog(log)

    # --- writing (the proxy's event loop) -----------------------------------------------------

    def append(self, ex: Exchange) -> None:
        """Queue `ex` for the store's writer thread. Never raises: logging must not fail traffic."""
        try:
            # Packing (scrubbing, compressing) happens in the store's writer thread.
            # `size` bounds the writer's queue by what the entry holds until it is packed.
            # Nobody waits for a log entry: no future, only a report if it fails.
            pack = partial(pack_exchange, ex, embeddings=self.embeddings, recorded=self.recorded)
            self.store.post_raw(
                [(LOG_DB, ex.id.encode(), pack)],
                size=len(ex.request_body) + len(ex.response_body) + 1024,
                on_error=self._report,
            )
        except Exception as exc:  # noqa: BLE001 - a bug here must cost a log line, not a request
            self._report(exc)
            return
        self.retention.entry_added()

    def recorded(self, ref: RecordingRef) -> bytes | None:
        """The body of the recording `ref` names, if the store holds that version of it."""
        try:
            rec = self.store.get(ref.namespace, ref.key, ref.seq, request=False)
        except StoreError as exc:
            log.warning("cannot read recording %s for the log: %s", ref.key, exc)
            return None
        return rec.body if rec is not None and rec.recorded_at == ref.recorded_at else None

    def record(self, data: bytes, *, vectors: bool = True) -> dict[str, Any]:
        """The full record of a stored log value (see `unpack_record`)."""
        return unpack_record(data, recorded=self.recorded, vectors=vectors)

    def _report(self, error: BaseException) -> None:
        self._errors.error("exchange log entry not saved: %s", error)

    def prune(self, older_than_s: float | None = None) -> int:
        """Delete entries that ended more than `older_than_s` (default: the retention) ago.

        Returns how many were removed (see `Retention.prune`).
        """
        return self.retention.prune(older_than_s)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every appended exchange is committed (and a running prune is done)."""
        self.store.flush(timeout)
        self.retention.join(timeout)

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
        return self.record(raw)

    def iter(
        self,
        flt: LogFilter | None = None,
        *,
        newest_first: bool = True,
        content: bool = False,
        after: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Matching records, newest (or oldest) first, read in short batches (entries written
        meanwhile may or may not be seen; none is seen twice).

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
                    # Vectors become float lists only for a caller that asked for content.
                    record = self.record(value, vectors=content)
                    if not flt.matches_content(record):
                        continue
            except (LogRecordError, orjson.JSONDecodeError) as exc:
                log.warning("skipping corrupt log entry %r in %s: %s", key, self.store.path, exc)
                continue
            yield record

    def count(self) -> int:
        return self.store.count(LOG_DB)

    def stats(self, flt: LogFilter | None = None) -> tuple[list[StatsRow], StatsRow]:
        """Totals by provider and model, and overall (see `proxy.log.query.StatsRow`)."""
        return stats(self.iter(flt))
