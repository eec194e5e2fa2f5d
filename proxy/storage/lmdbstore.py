"""Where recordings live: a small storage interface and its LMDB implementation.

Only this module imports lmdb; every `lmdb.Error` is translated to `StoreError` here, with a
message that names the path and says what to do. Reads are MVCC snapshots that never block the
writer, so the CLI can read a store while a proxy records into it, and several processes can share
one store. Writes go through a single writer thread that commits in batches, so the proxy's event
loop never waits on fsync.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

import lmdb

from llmreel.storage.records import SCHEMA_VERSION, RecordError, Recording, pack, unpack

log = logging.getLogger(__name__)

INITIAL_MAP_SIZE = 1 << 30  # 1 GiB of address space; the file itself grows only as needed
MAX_MAP_SIZE = 1 << 40
_BATCH = 256
_COALESCE_S = 0.002


# A job for the writer thread: writes (database, key, value; None deletes) and its future.
# An empty list of writes is a flush marker: its future resolves once earlier jobs committed.
_Writes = list[tuple[bytes, bytes, bytes | None]]
#: A value, or a function that makes it in the writer thread (keeping e.g. compression off the
#: proxy's event loop), or None to delete.
Value = bytes | Callable[[], bytes] | None
_Job = tuple[Sequence[tuple[bytes, bytes, Value]], concurrent.futures.Future[None]]
#: Named databases in a store. "entries" holds recordings; the others sit beside them.
DATABASES = (b"meta", b"entries", b"log", b"used", b"labels")


#: Why a write failed, as counted in `llmreel_store_write_errors_total{reason}`.
WRITE_ERROR_REASONS = ("disk_full", "map_full", "corrupt", "io_error", "closed")
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

    def get(
        self, namespace: str, key: str, seq: int = 0, *, request: bool = True
    ) -> Recording | None: ...
    def put(self, rec: Recording) -> None: ...
    def submit(self, rec: Recording) -> concurrent.futures.Future[None]: ...
    def delete(self, namespace: str, key: str, seq: int = 0) -> bool: ...
    def iter(self, namespace: str | None = None) -> Iterator[Recording]: ...
    def stats(self) -> StoreStats: ...
    def flush(self, timeout: float | None = None) -> None: ...
    def close(self) -> None: ...


def entry_key(namespace: str, key: str, seq: int = 0) -> bytes:
    # Namespace first so a namespace is one contiguous range; seq suffix only in sequence mode.
    suffix = f"\x00{seq:06d}" if seq else ""
    return f"{namespace}\x00{key}{suffix}".encode()


def validate_namespace(namespace: str) -> str:
    if not namespace or len(namespace) > 200 or "\x00" in namespace:
        raise ValueError("a namespace is 1 to 200 characters, without NUL")
    return namespace


class LmdbStore:
    """An LMDB environment holding recordings (and, beside them, other named databases)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        map_size: int = INITIAL_MAP_SIZE,
        max_map_size: int = MAX_MAP_SIZE,
    ) -> None:
        self.path = str(path)
        self.max_map_size = max_map_size
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
        self._lock = threading.Lock()  # excludes transactions during a map resize
        try:
            self._dbs = {name: self.env.open_db(name) for name in DATABASES}
            self._meta = self._dbs[b"meta"]
            self._entries = self._dbs[b"entries"]
            self._check_schema()
        except lmdb.Error as exc:
            self.env.close()
            raise self._error("read", exc) from exc
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._closed = False

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
        with self.env.begin(db=self._meta, write=True) as txn:
            salt: bytes | None = txn.get(b"scope_salt")
            if salt is None:
                salt = os.urandom(32)
                txn.put(b"scope_salt", salt)
        return salt

    # --- reading ------------------------------------------------------------------------------

    def get(self, namespace: str, key: str, seq: int = 0, *, request: bool = True) -> Recording | None:
        """The recording, or None; `request=False` skips parsing its canonical request."""
        raw = self._read(entry_key(namespace, key, seq))
        if raw is None:
            return None
        try:
            return unpack(raw, request=request)
        except RecordError as exc:
            raise StoreError(
                f"recording {key} in {self.path} is corrupt ({exc}); "
                f"remove it with `llmreel cache rm {key}` and record it again"
            ) from exc

    def _read(self, db_key: bytes, db: bytes = b"entries") -> bytes | None:
        handle = self._dbs[db]
        for _attempt in range(2):
            try:
                with self._lock, self.env.begin(db=handle) as txn:
                    value: bytes | None = txn.get(db_key)
                    return value
            except lmdb.MapResizedError:
                # Another process grew the map: adopt its size and read again.
                self._adopt_map_size()
            except lmdb.Error as exc:
                raise self._error("read", exc) from exc
        return None

    def iter(self, namespace: str | None = None) -> Iterator[Recording]:
        """Every recording (in one namespace), in key order, from one consistent snapshot."""
        prefix = f"{namespace}\x00".encode() if namespace is not None else b""
        try:
            with self.env.begin(db=self._entries) as txn:
                cursor = txn.cursor()
                if not cursor.set_range(prefix):
                    return
                for db_key, value in cursor:
                    if not db_key.startswith(prefix):
                        break
                    try:
                        yield unpack(value)
                    except RecordError as exc:
                        log.warning(
                            "skipping corrupt recording %r in %s: %s", db_key, self.path, exc
                        )
        except lmdb.Error as exc:
            raise self._error("read", exc) from exc

    def get_raw(self, db: bytes, key: bytes) -> bytes | None:
        """A value from one of the named `DATABASES`."""
        return self._read(key, db)

    def iter_raw(
        self, db: bytes, *, prefix: bytes = b"", start: bytes | None = None, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs of a named database in key order (or reversed), from one snapshot.

        `start` positions the cursor (inclusive): the first key >= start, or <= start in reverse.
        """
        try:
            with self.env.begin(db=self._dbs[db]) as txn:
                cursor = txn.cursor()
                if reverse:
                    upper = start if start is not None else _prefix_end(prefix) or None
                    if upper is None or not cursor.set_range(upper):
                        positioned = cursor.last()
                    elif start is not None and cursor.key() == start:
                        positioned = True  # `start` is inclusive
                    else:
                        positioned = cursor.prev()
                    items = cursor.iterprev(keys=True, values=True) if positioned else iter(())
                else:
                    positioned = cursor.set_range(start if start is not None else prefix)
                    items = cursor.iternext(keys=True, values=True) if positioned else iter(())
                for key, value in items:
                    if prefix and not key.startswith(prefix):
                        break
                    yield bytes(key), bytes(value)
        except lmdb.Error as exc:
            raise self._error("read", exc) from exc

    def count(self, db: bytes) -> int:
        try:
            with self._lock, self.env.begin(db=self._dbs[db]) as txn:
                return int(txn.stat(self._dbs[db])["entries"])
        except lmdb.Error as exc:
            raise self._error("read", exc) from exc

    def stats(self) -> StoreStats:
        try:
            with self._lock, self.env.begin(db=self._entries) as txn:
                entries = int(txn.stat(self._entries)["entries"])
            info = self.env.info()
            size = (int(info["last_pgno"]) + 1) * int(self.env.stat()["psize"])
        except lmdb.Error as exc:
            raise self._error("read", exc) from exc
        return StoreStats(entries=entries, size_bytes=size)

    # --- writing ------------------------------------------------------------------------------

    def put(self, rec: Recording) -> None:
        """Write one recording now, in the caller's thread."""
        self.write_raw([(b"entries", entry_key(rec.namespace, rec.key, rec.seq), pack(rec))])

    def submit(self, rec: Recording) -> concurrent.futures.Future[None]:
        """Queue a recording for the writer thread; the future resolves once it is committed."""
        # Packing copies the body: let the writer thread do it.
        return self.submit_raw([(b"entries", entry_key(rec.namespace, rec.key, rec.seq), partial(pack, rec))])

    def write_raw(self, writes: _Writes) -> None:
        """Apply (database, key, value) writes in one transaction now; a None value deletes."""
        self._write_batch(writes)

    def submit_raw(self, writes: Sequence[tuple[bytes, bytes, Value]]) -> concurrent.futures.Future[None]:
        """Queue writes for the writer thread, which commits queued jobs together.

        A value may be a function: the writer thread calls it just before the commit. If it
        raises, only this job fails.
        """
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        if self._closed:
            future.set_exception(StoreError(f"the store at {self.path} is closed", "closed"))
            return future
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="llmreel-store-writer")
            self._writer.daemon = True
            self._writer.start()
        self._queue.put((writes, future))
        return future

    def delete(self, namespace: str, key: str, seq: int = 0) -> bool:
        try:
            with self._lock, self.env.begin(db=self._entries, write=True) as txn:
                return bool(txn.delete(entry_key(namespace, key, seq)))
        except lmdb.Error as exc:
            raise self._error("write", exc) from exc

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
            ready = [job for job in map(_resolve, batch) if job is not None]
            try:
                self._write_batch([write for writes, _ in ready for write in writes])
            except Exception as exc:  # noqa: BLE001 - every waiter must learn of the failure
                error = exc if isinstance(exc, StoreError) else StoreError(str(exc))
                for _, future in ready:
                    future.set_exception(error)
            else:
                for _, future in ready:
                    future.set_result(None)

    def _write_batch(self, items: _Writes) -> None:
        while items:
            try:
                with self.env.begin(write=True) as txn:
                    for db, db_key, value in items:
                        if value is None:
                            txn.delete(db_key, db=self._dbs[db])
                        else:
                            txn.put(db_key, value, db=self._dbs[db])
                return
            except lmdb.MapFullError:
                self._grow()
            except lmdb.MapResizedError:
                self._adopt_map_size()
            except lmdb.Error as exc:
                raise self._error("write", exc) from exc

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

    def _grow(self) -> None:
        with self._lock:
            current = int(self.env.info()["map_size"])
            if current * 2 > self.max_map_size:
                raise StoreError(
                    f"the store at {self.path} reached {current} bytes; prune it with "
                    "`llmreel cache prune` or use another --store",
                    "map_full",
                )
            log.info("growing the store map at %s to %d MiB", self.path, current * 2 >> 20)
            self.env.set_mapsize(current * 2)

    def _adopt_map_size(self) -> None:
        with self._lock:
            self.env.set_mapsize(0)

    # --- lifecycle ----------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything submitted so far is committed."""
        if self._writer is None or self._closed:
            return
        concurrent.futures.wait([self.submit_raw([])], timeout=timeout)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join(timeout=30)
        self.env.close()

    def __enter__(self) -> LmdbStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _disk_nearly_full(path: str) -> bool:
    # LMDB reports a failed page write on a full disk as EIO, not ENOSPC: look at the disk.
    try:
        return shutil.disk_usage(path).free < 16 << 20
    except OSError:
        return False


def _resolve(job: _Job) -> tuple[_Writes, concurrent.futures.Future[None]] | None:
    """The job with every value made; None (its future failed) when making one raised."""
    writes, future = job
    try:
        return [(db, key, value() if callable(value) else value) for db, key, value in writes], future
    except Exception as exc:  # noqa: BLE001 - one bad value must not fail the other jobs
        future.set_exception(StoreError(f"cannot encode a value for the store: {exc}"))
        return None


def _prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with `prefix` (b"" if there is none)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b""
    return trimmed[:-1] + bytes([trimmed[-1] + 1])
