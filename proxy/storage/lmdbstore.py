"""Where recordings live: a small storage interface and its LMDB implementation.

Only this module imports lmdb; every `lmdb.Error` is translated to `StoreError` here, with a
message that names the path and says what to do. Reads are MVCC snapshots that never block the
writer, so the CLI can read a store while a proxy records into it, and several processes can share
one store. Writes go through a single writer thread that commits in batches, so the proxy's event
loop never waits on fsync; its queue is bounded (see `llmreel.storage.backlog` for the policy
when it is full), and `close` waits for it, however long that takes.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import lmdb
import orjson

from llmreel.core.bounded import BoundedCache
from llmreel.core.diff import sketch
from llmreel.storage.backlog import (
    CLOSE_REPORT_INTERVAL_S,
    DEFAULT_BACKLOG_BYTES,
    DEFAULT_BACKLOG_JOBS,
    JOB_OVERHEAD_BYTES,
    Backlog,
    wait_for_writer,
)
from llmreel.storage.candidates import (
    CANDIDATE_LIMIT,
    INDEX_DB,
    entry_key_of,
    index_entry,
    index_key,
    index_prefix,
    most_alike,
    packed_request,
)
from llmreel.storage.gate import MapGate
from llmreel.storage.records import SCHEMA_VERSION, RecordError, Recording, pack, unpack

log = logging.getLogger(__name__)

INITIAL_MAP_SIZE = 1 << 30  # 1 GiB of address space; the file itself grows only as needed
MAX_MAP_SIZE = 1 << 40
_BATCH = 256
_COALESCE_S = 0.002
# Iteration reads this many entries (or about this many bytes) per read transaction, then lets
# a map resize or a close through before the next batch.
_ITER_BATCH = 1024
_ITER_BATCH_BYTES = 8 << 20

# The store never asks for buffers: values are bytes. (Evaluated lazily: lmdb's types take no [].)
type _Txn = lmdb.Transaction[bytes]


_Writes = list[tuple[bytes, bytes, bytes | None]]
#: A value, or a function that makes it in the writer thread (keeping e.g. compression off the
#: proxy's event loop), or None to delete.
Value = bytes | Callable[[], bytes] | None
#: What a value made by a function is assumed to weigh in the backlog, unless told.
_LAZY_VALUE_BYTES = 4096
#: Memory for recordings kept decoded for replays (`LmdbStore.get`): the hot set of a test
#: suite, well under the proxy's RSS budget.
DECODED_CACHE_BYTES = 32 << 20
_DECODED_OVERHEAD = 1024  # a decoded recording's objects besides its body


@dataclass(slots=True)
class _Job:
    """Writes for the writer thread (database, key, value; None deletes), and their future.

    An empty list of writes is a flush marker: its future resolves once earlier jobs committed.
    """

    writes: Sequence[tuple[bytes, bytes, Value]]
    future: concurrent.futures.Future[None] | None = None
    """Resolved when the writes are committed (`submit_raw`); None for a job that only
    reports failures (`post_raw`)."""
    on_error: Callable[[StoreError], None] | None = None
    size: int | None = None
    """Bytes counted in the backlog; None for a flush marker, which the backlog never refuses."""


#: Named databases in a store. "entries" holds recordings; the others sit beside them.
#: "endpoints" indexes "entries" (see `llmreel.storage.candidates`); stores older than it lack it.
DATABASES = (b"meta", b"entries", b"log", b"used", INDEX_DB, b"labels")
#: How often, at most, `candidates` rebuilds an index that does not match the entries (an older
#: llmreel writing to the same store leaves it behind).
_REINDEX_INTERVAL_S = 600.0


#: Why a write failed, as counted in `llmreel_store_write_errors_total{reason}`. "backlog": the
#: writer's queue was full (see `llmreel.storage.backlog`).
WRITE_ERROR_REASONS = ("disk_full", "map_full", "corrupt", "io_error", "closed", "backlog")
_CORRUPTION = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.BadTxnError, lmdb.InvalidError)


class StoreError(Exception):
    """The store cannot be opened, read or written. The message says what to do."""

    def __init__(self, message: str, reason: str = "io_error") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class StoreStats:
    entries: int
    size_bytes: int


class Store(Protocol):
    """What the proxy needs from a store. A shared tier (e.g. Redis) implements the same."""

    path: str
    blocking_reads: bool
    """Whether `get` blocks on file I/O (an export directory opens, reads and decodes a file):
    if so, call it off the event loop. LMDB's `get` reads mapped pages, fine on the loop.
    `candidates` decodes several recordings: call it off the loop whatever the store."""

    def get(
        self, namespace: str, key: str, seq: int = 0, *, request: bool = True
    ) -> Recording | None: ...
    def put(self, rec: Recording) -> None: ...
    def submit(self, rec: Recording) -> concurrent.futures.Future[None]: ...
    def delete(self, namespace: str, key: str, seq: int = 0) -> bool: ...
    def iter(self, namespace: str | None = None) -> Iterator[Recording]: ...
    def candidates(
        self, namespace: str, request: dict[str, Any], limit: int = CANDIDATE_LIMIT
    ) -> list[dict[str, Any]]:
        """Up to `limit` recorded requests of `request`'s endpoint in `namespace`, the most
        alike first: what `llmreel.core.diff.explain` compares to explain a miss."""
        ...

    def stats(self) -> StoreStats: ...
    def flush(self, timeout: float | None = None) -> None: ...
    def close(self) -> None: ...


def entry_key(namespace: str, key: str, seq: int = 0) -> bytes:
    # Namespace first so a namespace is one contiguous range; seq suffix only in sequence mode.
    suffix = f"\x00{seq:06d}" if seq else ""
    return f"{namespace}\x00{key}{suffix}".encode()


def parse_entry_key(raw: bytes) -> tuple[str, str, int]:
    """(namespace, key, seq) of an `entry_key`."""
    namespace, _, rest = raw.decode("utf-8", "replace").partition("\x00")
    key, _, seq = rest.partition("\x00")
    return namespace, key, int(seq) if seq.isdigit() else 0


def validate_namespace(namespace: str) -> str:
    if not namespace or len(namespace) > 200 or "\x00" in namespace:
        raise ValueError("a namespace is 1 to 200 characters, without NUL")
    return namespace


class LmdbStore:
    """An LMDB environment holding recordings (and, beside them, other named databases)."""

    blocking_reads = False  # reads are memory-mapped page lookups, fine on the event loop

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        map_size: int = INITIAL_MAP_SIZE,
        max_map_size: int = MAX_MAP_SIZE,
        backlog_bytes: int = DEFAULT_BACKLOG_BYTES,
        backlog_jobs: int = DEFAULT_BACKLOG_JOBS,
        decoded_cache_bytes: int = DECODED_CACHE_BYTES,
    ) -> None:
        self.path = str(path)
        self.max_map_size = max_map_size
        #: What the writer thread has still to write; `submit` fails fast when it is full.
        self.backlog = Backlog(self.path, max_bytes=backlog_bytes, max_jobs=backlog_jobs)
        directory = Path(self.path)
        if not directory.exists():
            if not create:
                raise StoreError(
                    f"no store at {self.path}: record into it first with `llmreel serve` "
                    "or pass --store to name another one"
                )
            directory.mkdir(mode=0o700, parents=True)
        elif not directory.is_dir():
            raise StoreError(f"{self.path} is not a directory: --store names a directory")
        directory.chmod(0o700)
        try:
            self.env = lmdb.open(
                self.path,
                map_size=map_size,
                max_dbs=16,
                mode=0o600,
                readahead=False,
                max_readers=512,
            )
        except lmdb.Error as exc:
            raise StoreError(
                f"cannot open the store at {self.path}: {exc}. If the store is corrupt, move it "
                "away and record again (or rebuild it with `llmreel cache import`)."
            ) from exc
        for name in ("data.mdb", "lock.mdb"):
            file = directory / name
            if file.exists():
                file.chmod(0o600)
        self._check_length(directory / "data.mdb")
        self._gate = MapGate()  # every transaction holds it shared; a map resize, exclusive
        try:
            self._dbs = {name: self.env.open_db(name) for name in DATABASES}
            self._meta = self._dbs[b"meta"]
            self._entries = self._dbs[b"entries"]
            self._index = self._dbs[INDEX_DB]
            self._check_schema()
        except lmdb.Error as exc:
            self.env.close()
            raise self._error("read", exc) from exc
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._closed = False
        # Orders submissions against `close`: nothing is queued behind the writer's stop marker.
        self._submit_lock = threading.Lock()
        self._reindex_lock = threading.Lock()
        self._reindexed_at: float | None = None
        #: Recordings decoded for replay, by entry key, with the stored bytes they came from.
        self._decoded: BoundedCache[bytes, tuple[bytes, Recording]] = BoundedCache(
            decoded_cache_bytes
        )
        self._decoded_lock = threading.Lock()

    def _check_length(self, data_file: Path) -> None:
        # A truncated data file opens fine, but reading its missing pages kills the process
        # with SIGBUS: refuse it while we still can say why.
        try:
            needed = (int(self.env.info()["last_pgno"]) + 1) * int(self.env.stat()["psize"])
            actual = data_file.stat().st_size
        except (lmdb.Error, OSError):
            return
        if actual < needed:
            self.env.close()
            raise StoreError(
                f"the store at {self.path} is truncated ({actual} of {needed} bytes): move it "
                "away and record again, or rebuild it from an export with `llmreel cache import`"
            )

    # --- schema -------------------------------------------------------------------------------

    def _check_schema(self) -> None:
        with self.env.begin(db=self._meta, write=True) as txn:
            found = txn.get(b"schema")
            if found is None:
                txn.put(b"schema", str(SCHEMA_VERSION).encode())
                return
        if found != str(SCHEMA_VERSION).encode():
            self.env.close()
            raise StoreError(
                f"the store at {self.path} has schema version {found.decode(errors='replace')}, "
                f"but this llmreel reads version {SCHEMA_VERSION}. Use the llmreel version that "
                "wrote it to `llmreel cache export` it, then import the export here; or move "
                "the store away and record again."
            )

    def secret_salt(self) -> bytes:
        """A random salt kept in this store (created on first use), for credential scopes."""
        fresh = os.urandom(32)

        def get_or_make(txn: _Txn) -> bytes:
            salt = txn.get(b"scope_salt", db=self._meta)
            if salt is None:
                salt = fresh
                txn.put(b"scope_salt", salt, db=self._meta)
            return salt

        return self._transact(get_or_make, write=True)

    # --- reading ------------------------------------------------------------------------------

    def get(self, namespace: str, key: str, seq: int = 0, *, request: bool = True) -> Recording | None:
        """The recording, or None; `request=False` skips parsing its canonical request.

        Replays (`request=False`) of a value read before are served decoded from a bounded
        cache: the value is still read from the store every time (another process may have
        replaced or removed it), and the decoded recording is reused only if the stored bytes
        are the same. Callers must not modify a returned recording.
        """
        db_key = entry_key(namespace, key, seq)
        raw = self._read(db_key)
        if raw is None:
            return None
        if not request:
            with self._decoded_lock:
                cached = self._decoded.get(db_key)
            if cached is not None and cached[0] == raw:
                return cached[1]
        try:
            rec = unpack(raw, request=request)
        except RecordError as exc:
            raise StoreError(
                f"recording {key} in {self.path} is corrupt ({exc}); "
                f"remove it with `llmreel cache rm {key}` and record it again"
            ) from exc
        if not request:
            with self._decoded_lock:
                self._decoded.put(db_key, (raw, rec), len(raw) + len(rec.body) + _DECODED_OVERHEAD)
        return rec

    def _read(self, db_key: bytes, db: bytes = b"entries") -> bytes | None:
        handle = self._dbs[db]
        return self._transact(lambda txn: txn.get(db_key, db=handle))

    def iter(self, namespace: str | None = None) -> Iterator[Recording]:
        """Every recording (in one namespace), in key order.

        Entries are read in batches, each from its own snapshot (see `iter_raw`).
        """
        prefix = f"{namespace}\x00".encode() if namespace is not None else b""
        for db_key, value in self.iter_raw(b"entries", prefix=prefix):
            try:
                yield unpack(value)
            except RecordError as exc:
                log.warning("skipping corrupt recording %r in %s: %s", db_key, self.path, exc)

    def get_raw(self, db: bytes, key: bytes) -> bytes | None:
        """A value from one of the named `DATABASES`."""
        return self._read(key, db)

    def iter_raw(
        self, db: bytes, *, prefix: bytes = b"", start: bytes | None = None, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs of a named database in key order (or reversed).

        `start` positions the cursor (inclusive): the first key >= start, or <= start in reverse.

        Pairs are read in batches of up to 1,024 (or 8 MiB), each in its own read transaction, and
        no transaction stays open while the caller holds a pair: a map resize (or `close`) is
        never blocked by a slow consumer, and the caller may write to the store as it iterates.
        So every key is seen at most once and in order, and every entry committed before the
        iteration began and not deleted since is seen; entries written during the iteration
        may or may not be.
        """
        handle = self._dbs[db]
        after: bytes | None = None  # the last key handed out
        while True:
            batch, more = self._transact(
                partial(
                    _read_batch, handle, prefix=prefix, start=start, after=after, reverse=reverse
                )
            )
            yield from batch
            if not more:
                return
            after = batch[-1][0]

    def count(self, db: bytes) -> int:
        handle = self._dbs[db]
        return self._transact(lambda txn: int(txn.stat(handle)["entries"]))

    def stats(self) -> StoreStats:
        entries = self.count(b"entries")
        try:
            info = self.env.info()
            size = (int(info["last_pgno"]) + 1) * int(self.env.stat()["psize"])
        except lmdb.Error as exc:
            raise self._error("read", exc) from exc
        return StoreStats(entries=entries, size_bytes=size)

    def _transact[T](self, work: Callable[[_Txn], T], *, write: bool = False) -> T:
        """`work(txn)` in a transaction that holds the map gate shared; its result.

        A write that fills the map grows it and runs again (so `work` must be repeatable); a
        map grown by another process is adopted, and the transaction run again.
        """
        while True:
            try:
                with self._gate.shared():
                    # Only a write can fill the map; reads skip asking for its size.
                    seen_size = int(self.env.info()["map_size"]) if write else 0
                    with self.env.begin(write=write) as txn:
                        return work(txn)
            except lmdb.MapFullError:
                self._grow(seen_size)
            except lmdb.MapResizedError:
                # Another process grew the map: adopt its size and run again.
                self._adopt_map_size()
            except lmdb.Error as exc:
                raise self._error("write" if write else "read", exc) from exc

    # --- writing ------------------------------------------------------------------------------

    def put(self, rec: Recording) -> None:
        """Write one recording now, in the caller's thread."""
        self.put_many([rec])

    def put_many(self, recs: Iterable[Recording]) -> None:
        """Write recordings now, in one transaction (one fsync), in the caller's thread.

        Cheaper than `write_raw` of packed recordings, which decodes them again to index them.
        """
        writes: _Writes = []
        for rec in recs:
            db_key = entry_key(rec.namespace, rec.key, rec.seq)
            writes.append((b"entries", db_key, pack(rec)))
            writes.append((INDEX_DB, index_key(db_key, rec.request), sketch(rec.request)))
        self._write_batch(writes)

    def submit(self, rec: Recording) -> concurrent.futures.Future[None]:
        """Queue a recording for the writer thread; the future resolves once it is committed.

        It fails at once, with reason "backlog", when the writer's queue is full.
        """
        # Packing copies the body, sketching hashes the request: let the writer thread do both.
        db_key = entry_key(rec.namespace, rec.key, rec.seq)
        writes: list[tuple[bytes, bytes, Value]] = [
            (b"entries", db_key, partial(pack, rec)),
            (INDEX_DB, index_key(db_key, rec.request), partial(sketch, rec.request)),
        ]
        return self.submit_raw(writes, size=recording_weight(rec))

    def write_raw(self, writes: _Writes) -> None:
        """Apply (database, key, value) writes in one transaction now; a None value deletes.

        Recordings written to "entries" are indexed (decoding them), unless `writes` writes
        the index too.
        """
        self._write_batch(_with_index(writes))

    def submit_raw(
        self, writes: Sequence[tuple[bytes, bytes, Value]], *, size: int | None = None
    ) -> concurrent.futures.Future[None]:
        """Queue writes for the writer thread, which commits queued jobs together.

        A value may be a function: the writer thread calls it just before the commit. If it
        raises, only this job fails. `size` is about how many bytes the values will take (by
        default the bytes given, and 4 KiB for each function): the backlog counts it, and the
        future fails at once, with reason "backlog", when the backlog is full.
        """
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._enqueue(_Job(writes, future), size)
        return future

    def post_raw(
        self,
        writes: Sequence[tuple[bytes, bytes, Value]],
        *,
        size: int | None = None,
        on_error: Callable[[StoreError], None],
    ) -> None:
        """`submit_raw` for writes nobody waits for: no future is made (that is most of the
        cost of queueing a small write); `on_error` is called, in the writer thread or here,
        if they fail."""
        self._enqueue(_Job(writes, on_error=on_error), size)

    def _enqueue(self, job: _Job, size: int | None) -> None:
        if job.writes:
            job.size = JOB_OVERHEAD_BYTES + (size if size is not None else _weight(job.writes))
        with self._submit_lock:
            refused = refuse_write(self.path, self._closed, self.backlog, job.size)
            if refused is None:
                if self._writer is None:
                    self._writer = threading.Thread(
                        target=self._write_loop, name="llmreel-store-writer"
                    )
                    self._writer.daemon = True
                    self._writer.start()
                self._queue.put(job)
                return
        _settle(job, refused)  # never counted in the backlog

    def delete(self, namespace: str, key: str, seq: int = 0) -> bool:
        db_key = entry_key(namespace, key, seq)

        def remove(txn: _Txn) -> bool:
            self._unindex(txn, db_key)
            return bool(txn.delete(db_key, db=self._entries))

        return self._transact(remove, write=True)

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._queue.empty():
                # Let a burst gather: one commit (and one fsync) for many jobs. Nobody waits on
                # these writes but single-flight followers, for a couple of milliseconds.
                time.sleep(_COALESCE_S)
            batch = [item]
            while len(batch) < _BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                batch.append(more)
            ready: list[tuple[_Job, _Writes]] = []
            for job in batch:
                made = _resolve(job)
                if isinstance(made, StoreError):
                    self._finish(job, made)
                else:
                    ready.append((job, _with_index(made)))
            try:
                self._write_batch([write for _, writes in ready for write in writes])
            except Exception as exc:  # noqa: BLE001 - every waiter must learn of the failure
                error = exc if isinstance(exc, StoreError) else StoreError(str(exc))
                for job, _ in ready:
                    self._finish(job, error)
            else:
                for job, _ in ready:
                    self._finish(job, None)

    def _finish(self, job: _Job, error: StoreError | None) -> None:
        # Out of the backlog before the future resolves: whoever waits on it sees the room.
        if job.size is not None:
            self.backlog.done(job.size)
        _settle(job, error)

    def _write_batch(self, items: _Writes) -> None:
        if items:
            self._transact(partial(self._apply, items), write=True)

    def _apply(self, items: _Writes, txn: _Txn) -> None:
        for db, db_key, value in items:
            if db == b"entries":
                self._unindex(txn, db_key)  # the new value's index entry is among `items`
            if value is None:
                txn.delete(db_key, db=self._dbs[db])
            else:
                txn.put(db_key, value, db=self._dbs[db])

    def _unindex(self, txn: _Txn, db_key: bytes) -> None:
        """Remove the index entry of the recording at `db_key`, if there is one."""
        old = txn.get(db_key, db=self._entries)
        if old is not None:
            txn.delete(index_key(db_key, packed_request(old)), db=self._index)

    # --- candidates for explaining a miss -----------------------------------------------------

    def candidates(
        self, namespace: str, request: dict[str, Any], limit: int = CANDIDATE_LIMIT
    ) -> list[dict[str, Any]]:
        """Recorded requests of `request`'s endpoint in `namespace`, most alike first.

        At most `limit`, for `llmreel.core.diff.explain`. The cost does not depend on the size
        of the store: one range of the endpoint index (128 bytes a recording of this endpoint)
        is ranked, and only the `limit` best are decoded. The first call on a store written by
        an older llmreel indexes it (once, O(store)); call it off the event loop.
        """
        self._check_index()
        pool = self.iter_raw(INDEX_DB, prefix=index_prefix(namespace, request))
        keys = [entry_key_of(k) for k in most_alike(request, pool, limit)]
        values = self._transact(lambda txn: [txn.get(k, db=self._entries) for k in keys])
        found = [packed_request(v) for v in values if v is not None]
        return [r for r in found if r is not None]

    def _check_index(self) -> None:
        """Rebuild the endpoint index if it does not match the entries (see `_rebuild_index`).

        "Match" is judged by size alone, which costs nothing: an older llmreel that adds as
        many recordings to a shared store as it removes goes unnoticed until the sizes differ.
        Its new recordings are then missing from the candidates, and the ones it removed are
        skipped; misses are still explained, from the other recordings.
        """
        entries, indexed = self._index_sizes()
        if entries == indexed:
            return
        with self._reindex_lock:
            recently = self._reindexed_at is not None and (
                time.monotonic() - self._reindexed_at < _REINDEX_INTERVAL_S
            )
            entries, indexed = self._index_sizes()
            if entries == indexed or recently:
                return  # a store shared with an older llmreel: a slightly stale index will do
            log.info(
                "indexing the %d recordings in %s by endpoint, for explaining misses (once)",
                entries, self.path,
            )  # fmt: skip
            self._rebuild_index()
            self._reindexed_at = time.monotonic()

    def _index_sizes(self) -> tuple[int, int]:
        def sizes(txn: _Txn) -> tuple[int, int]:
            return int(txn.stat(self._entries)["entries"]), int(txn.stat(self._index)["entries"])

        return self._transact(sizes)

    def _rebuild_index(self) -> None:
        """Index every entry, and drop index entries of recordings that are gone.

        This llmreel keeps the index in step with every write, so entries and index are the
        same size; a store from before the index, or shared with an older llmreel, is not.
        Done in batches, each its own write transaction, so the writer thread is never held
        for long; the proxy may record meanwhile.
        """
        for batch in itertools.batched(self.iter_raw(b"entries"), _ITER_BATCH):
            planned = [(db_key, value, *index_entry(db_key, value)) for db_key, value in batch]

            def add(txn: _Txn, planned: list[tuple[bytes, bytes, bytes, bytes]] = planned) -> None:
                for db_key, value, key, sketched in planned:
                    if txn.get(db_key, db=self._entries) == value:  # unchanged since read
                        txn.put(key, sketched, db=self._index)

            self._transact(add, write=True)
        for keys in itertools.batched((k for k, _ in self.iter_raw(INDEX_DB)), _ITER_BATCH):

            def drop(txn: _Txn, keys: tuple[bytes, ...] = keys) -> None:
                for key in keys:
                    if txn.get(entry_key_of(key), db=self._entries) is None:
                        txn.delete(key, db=self._index)

            self._transact(drop, write=True)

    def _error(self, action: str, exc: lmdb.Error) -> StoreError:
        """Translate an lmdb error into one that says what happened and what to do."""
        if isinstance(exc, _CORRUPTION):
            return StoreError(
                f"the store at {self.path} is corrupt ({exc}): move it away and record again, "
                "or rebuild it from an export with `llmreel cache import`",
                "corrupt",
            )
        if "No space left" in str(exc) or _disk_nearly_full(self.path):
            return StoreError(
                f"cannot {action} the store at {self.path}: the disk is full. Free some space "
                "or prune with `llmreel cache prune`; traffic keeps flowing unrecorded.",
                "disk_full",
            )
        return StoreError(
            f"cannot {action} the store at {self.path}: {exc}. Check free disk space and "
            "permissions; traffic keeps flowing unrecorded."
        )

    def _grow(self, seen_size: int) -> None:
        """Double the map, unless it grew since a transaction found it full at `seen_size`."""
        with self._gate.exclusive():
            current = int(self.env.info()["map_size"])
            if current > seen_size:
                return  # another thread grew it meanwhile
            if current * 2 > self.max_map_size:
                raise StoreError(
                    f"the store at {self.path} reached {current} bytes; prune it with "
                    "`llmreel cache prune` or use another --store",
                    "map_full",
                )
            log.info("growing the store map at %s to %d MiB", self.path, current * 2 >> 20)
            self.env.set_mapsize(current * 2)

    def _adopt_map_size(self) -> None:
        with self._gate.exclusive():
            self.env.set_mapsize(0)

    # --- lifecycle ----------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything submitted so far is committed."""
        if self._writer is None or self._closed:
            return
        concurrent.futures.wait([self.submit_raw([])], timeout=timeout)

    def close(self, *, report_every_s: float = CLOSE_REPORT_INTERVAL_S) -> None:
        """Write what was submitted, then close the environment.

        Waits for the writer as long as it takes (closing under a writer's transaction can
        crash the process), logging every `report_every_s` what it still waits for.
        """
        with self._submit_lock:
            if self._closed:
                return
            self._closed = True
            writer = self._writer
            if writer is not None:
                self._queue.put(None)
        if writer is not None:

            def finished(timeout: float) -> bool:
                writer.join(timeout)
                return not writer.is_alive()

            wait_for_writer(finished, self.backlog, report_every_s)
        with self._gate.exclusive():  # no reader is inside a transaction
            self.env.close()

    def __enter__(self) -> LmdbStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def recording_weight(rec: Recording) -> int:
    """About how many bytes a recording holds in memory until it is written."""
    return len(rec.body) + len(orjson.dumps(rec.request))


def refuse_write(path: str, closed: bool, backlog: Backlog, size: int | None) -> StoreError | None:
    """Why a write of `size` bytes cannot be queued for a store's writer thread: it is closed,
    or its backlog is full. None: it is admitted into `backlog` (a None `size` is not counted)."""
    if closed:
        return StoreError(f"the store at {path} is closed", "closed")
    if size is not None and not backlog.admit(size):
        return StoreError(backlog.refusal(), "backlog")
    return None


def _disk_nearly_full(path: str) -> bool:
    # LMDB reports a failed page write on a full disk as EIO, not ENOSPC: look at the disk.
    try:
        return shutil.disk_usage(path).free < 16 << 20
    except OSError:
        return False


def _settle(job: _Job, error: StoreError | None) -> None:
    """Tell whoever submitted `job` how it ended."""
    if job.future is not None:
        if error is None:
            job.future.set_result(None)
        else:
            job.future.set_exception(error)
    elif error is not None and job.on_error is not None:
        job.on_error(error)


def _resolve(job: _Job) -> _Writes | StoreError:
    """The job's writes with every value made, or why making one failed."""
    try:
        return [(db, key, value() if callable(value) else value) for db, key, value in job.writes]
    except Exception as exc:  # noqa: BLE001 - one bad value must not fail the other jobs
        return StoreError(f"cannot encode a value for the store: {exc}")


def _with_index(writes: _Writes) -> _Writes:
    """`writes` with the index entry of each recording written to "entries" after it.

    Writes that write the index themselves (`put`, `submit`) are taken as they are. Deletes
    need no index entry here: `_apply` removes the old one of every recording it replaces.
    """
    if any(db == INDEX_DB for db, _, _ in writes) or not any(
        db == b"entries" for db, _, _ in writes
    ):
        return writes
    out: _Writes = []
    for db, db_key, value in writes:
        out.append((db, db_key, value))
        if db == b"entries" and value is not None:
            out.append((INDEX_DB, *index_entry(db_key, value)))
    return out


def _weight(writes: Sequence[tuple[bytes, bytes, Value]]) -> int:
    """About how many bytes `writes` will hold in memory until they are written."""
    return sum(
        len(key) + (_LAZY_VALUE_BYTES if callable(value) else len(value or b""))
        for _, key, value in writes
    )


def _read_batch(
    db: lmdb._Database,
    txn: _Txn,
    *,
    prefix: bytes,
    start: bytes | None,
    after: bytes | None,
    reverse: bool,
) -> tuple[list[tuple[bytes, bytes]], bool]:
    """The next batch of `iter_raw`'s pairs (past `after`, the last key of the previous batch),
    and whether more may follow."""
    cursor = txn.cursor(db)
    if after is not None:
        if reverse:
            positioned = cursor.prev() if cursor.set_range(after) else cursor.last()
        else:
            positioned = cursor.set_range(after) and (cursor.key() != after or cursor.next())
    elif reverse:
        upper = start if start is not None else _prefix_end(prefix) or None
        if upper is None or not cursor.set_range(upper):
            positioned = cursor.last()
        elif start is not None and cursor.key() == start:
            positioned = True  # `start` is inclusive
        else:
            positioned = cursor.prev()
    else:
        positioned = cursor.set_range(start if start is not None else prefix)
    batch: list[tuple[bytes, bytes]] = []
    if not positioned:
        return batch, False
    size = 0
    for key, value in cursor.iterprev() if reverse else cursor.iternext():  # from the current one
        if prefix and not key.startswith(prefix):
            return batch, False
        batch.append((key, value))
        size += len(value)
        if len(batch) >= _ITER_BATCH or size >= _ITER_BATCH_BYTES:
            return batch, True
    return batch, False


def _prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with `prefix` (b"" if there is none)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b""
    return trimmed[:-1] + bytes([trimmed[-1] + 1])
