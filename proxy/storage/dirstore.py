"""A store backed by an export directory, so committed recordings replay with no import step.

`--store tests/recordings` serves recordings straight from the files `llmreel cache export`
wrote, and in auto mode writes new ones back as files. An entry's file name is a function of its
namespace, key and seq (`proxy.export.entry_path`), so `get` computes the path and reads one
file: no index to load or go stale, and files another process adds are seen at once.

Writes are atomic (a temporary file, fsync, then rename), private (files 0600, directories 0700)
and skipped when the file already holds the same bytes, so an unchanged recording never shows
up in `git status`. Every OSError becomes a `StoreError` naming the path.

Reads open and decode files, so they may block: `blocking_reads` is True, and callers run them
off the event loop. For explaining misses, `candidates` keeps an in-memory endpoint index of
each namespace, built on first use and refreshed when its directory changes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmreel.core.diff import sketch
from llmreel.storage.backlog import (
    CLOSE_REPORT_INTERVAL_S,
    DEFAULT_BACKLOG_BYTES,
    DEFAULT_BACKLOG_JOBS,
    JOB_OVERHEAD_BYTES,
    Backlog,
    wait_for_writer,
)
from llmreel.storage.candidates import CANDIDATE_LIMIT, endpoint_id, most_alike
from llmreel.storage.export import (
    EXPORT_VERSION,
    MARKER_FILE,
    ExportError,
    dumps,
    entry_path,
    escape_name,
    from_export,
    loads,
    marker,
    parse_entry_path,
    to_export,
)
from llmreel.storage.lmdbstore import (
    StoreError,
    StoreStats,
    entry_key,
    recording_weight,
    refuse_write,
    validate_namespace,
)
from llmreel.storage.records import Recording

log = logging.getLogger(__name__)

# A directory changed this recently may change again within its mtime's granularity (up to 2 s
# on some filesystems) without its mtime moving: list it again rather than trust the mtime.
_FRESH_NS = 2_000_000_000

__all__ = [
    "DirStore",
    "EntryFile",
    "SyncReport",
    "read_marker",
    "sync_export",
    "write_file_atomic",
]


@dataclass(frozen=True, slots=True)
class EntryFile:
    """One entry file. `namespace` is None when the directory name is a shortened (hashed) one."""

    path: Path
    namespace: str | None
    key: str
    seq: int


def write_file_atomic(path: Path, data: bytes, *, skip_same: bool = True) -> bool:
    """Write `data` to `path` atomically (0600); False when the file already held exactly it."""
    if skip_same:
        try:
            if path.stat().st_size == len(data) and path.read_bytes() == data:
                return False
        except FileNotFoundError:
            pass
    # A dot name, so that readers listing the directory never take it for an entry.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            # Without fsync a crash after the rename can leave an empty file under the real name.
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return True


def read_marker(directory: Path) -> int | None:
    """The export format version named by `directory`'s marker file, or None if there is none."""
    try:
        data = (directory / MARKER_FILE).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot read {directory / MARKER_FILE}: {exc}") from exc
    try:
        version = loads(data).get("version")
    except ExportError as exc:
        raise StoreError(
            f"{directory / MARKER_FILE} is not a valid llmreel export marker ({exc}); "
            f"re-create it with `llmreel cache export {directory}`"
        ) from exc
    if not isinstance(version, int):
        raise StoreError(f"{directory / MARKER_FILE} has no format version")
    return version


@dataclass(slots=True)
class _Listing:
    """What `DirStore.candidates` knows of one namespace's directory."""

    mtime_ns: int = -1
    listed_at_ns: int = 0
    files: dict[Path, tuple[bytes, bytes] | None] = field(default_factory=dict)
    """Entry file -> (endpoint id, sketch) of its request; None when it is another namespace's
    (a shared, hashed or case-folded directory) or cannot be decoded."""


class DirStore:
    """Recordings as export files: `<dir>/<namespace>/<key>.json`, one per entry."""

    blocking_reads = True  # every read opens, reads and decodes a file

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        backlog_bytes: int = DEFAULT_BACKLOG_BYTES,
        backlog_jobs: int = DEFAULT_BACKLOG_JOBS,
    ) -> None:
        self.path = str(path)
        self.root = Path(self.path)
        self._closed = False
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        # Orders submissions against `close`, and creates the writer once.
        self._executor_lock = threading.Lock()
        #: What the writer thread has still to write; `submit` fails fast when it is full.
        self.backlog = Backlog(self.path, max_bytes=backlog_bytes, max_jobs=backlog_jobs)
        self._listings: dict[str, _Listing] = {}
        self._listings_lock = threading.Lock()
        try:
            if not self.root.exists():
                if not create:
                    raise StoreError(
                        f"no export directory at {self.path}: create it with "
                        f"`llmreel cache export {self.path}`"
                    )
                self.root.mkdir(mode=0o700, parents=True)
            elif not self.root.is_dir():
                raise StoreError(f"{self.path} is not a directory: --store names a directory")
            version = read_marker(self.root)
            if version is None and create:
                # Best effort: it only makes the directory recognisable (a read-only checkout
                # in CI still replays without it, from its `*/*.json` entries).
                with contextlib.suppress(OSError):
                    write_file_atomic(self.root / MARKER_FILE, dumps(marker()))
            elif version is not None and version != EXPORT_VERSION:
                raise StoreError(
                    f"the export at {self.path} has format version {version}, but this llmreel "
                    f"reads version {EXPORT_VERSION}. Import it with the llmreel version that "
                    "wrote it, then export it again with this one."
                )
        except OSError as exc:
            raise StoreError(f"cannot open the export directory {self.path}: {exc}") from exc

    # --- reading ------------------------------------------------------------------------------

    def file_for(self, namespace: str, key: str, seq: int = 0) -> Path:
        return self.root / entry_path(namespace, key, seq)

    def get(
        self, namespace: str, key: str, seq: int = 0, *, request: bool = True
    ) -> Recording | None:
        # `request` exists for parity with LmdbStore: an export file is parsed whole anyway.
        path = self.file_for(namespace, key, seq)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc
        rec = self._decode(path, data)
        # On a case-insensitive filesystem "Test/" also answers for "test/": check the content.
        if rec.namespace != namespace or rec.key != key or rec.seq != seq:
            return None
        return rec

    def _decode(self, path: Path, data: bytes) -> Recording:
        try:
            return from_export(loads(data))
        except ExportError as exc:
            raise StoreError(
                f"recording file {path} is corrupt ({exc}); fix it, or delete it and record "
                "it again"
            ) from exc

    def files(self, namespace: str | None = None) -> Iterator[EntryFile]:
        """Entry files, without reading them, in no particular order."""
        try:
            if namespace is not None:
                directory = self.root / escape_name(namespace)
                dirs = [directory] if directory.is_dir() else []
            else:
                dirs = [d for d in self.root.iterdir() if d.is_dir()]
            for directory in dirs:
                for file in directory.iterdir():
                    name = parse_entry_path(directory.name, file.name)
                    if name is not None:
                        yield EntryFile(file, name.namespace, name.key, name.seq)
        except OSError as exc:
            raise StoreError(f"cannot list the export directory {self.path}: {exc}") from exc

    def read_file(self, entry: EntryFile) -> Recording:
        """Decode one entry file; raises `StoreError` if it is corrupt."""
        try:
            data = entry.path.read_bytes()
        except OSError as exc:
            raise StoreError(f"cannot read {entry.path}: {exc}") from exc
        return self._decode(entry.path, data)

    def iter(self, namespace: str | None = None) -> Iterator[Recording]:
        """Every recording (in one namespace), in the order an LMDB store gives them."""
        recs: list[Recording] = []
        for entry in self.files(namespace):
            try:
                rec = self.read_file(entry)
            except StoreError as exc:
                log.warning("skipping %s", exc)
                continue
            if namespace is not None and rec.namespace != namespace:
                continue  # a case-insensitive or hashed directory shared by two namespaces
            recs.append(rec)
        recs.sort(key=lambda r: entry_key(r.namespace, r.key, r.seq))
        yield from recs

    def candidates(
        self, namespace: str, request: dict[str, Any], limit: int = CANDIDATE_LIMIT
    ) -> list[dict[str, Any]]:
        """Recorded requests of `request`'s endpoint in `namespace`, most alike first.

        At most `limit`, for `llmreel.core.diff.explain`. The first call for a namespace reads
        its files once; later calls read only files added since (found when the directory's
        mtime moves) and the `limit` best. Blocking: call it off the event loop.
        """
        wanted = endpoint_id(request)
        with self._listings_lock:
            files = self._listing(namespace).files
            pool = [
                (path, known[1]) for path, known in files.items() if known and known[0] == wanted
            ]
        found: list[dict[str, Any]] = []
        for path in most_alike(request, pool, limit):
            try:
                rec = self._decode(path, path.read_bytes())
            except (OSError, StoreError):
                continue  # removed or spoilt since it was indexed
            if rec.namespace == namespace:
                found.append(rec.request)
        return found

    def _listing(self, namespace: str) -> _Listing:
        """The namespace's listing, brought up to date with its directory."""
        listing = self._listings.setdefault(namespace, _Listing())
        now = time.time_ns()
        try:
            mtime = (self.root / escape_name(namespace)).stat().st_mtime_ns
        except FileNotFoundError:
            listing.files.clear()
            return listing
        except OSError as exc:
            raise StoreError(f"cannot read the export directory {self.path}: {exc}") from exc
        if mtime == listing.mtime_ns and listing.listed_at_ns - mtime > _FRESH_NS:
            return listing
        present = {entry.path for entry in self.files(namespace)}
        for gone in listing.files.keys() - present:
            del listing.files[gone]
        for path in present - listing.files.keys():
            listing.files[path] = self._indexed(path, namespace)
        listing.mtime_ns, listing.listed_at_ns = mtime, now
        return listing

    def _indexed(self, path: Path, namespace: str) -> tuple[bytes, bytes] | None:
        try:
            rec = self._decode(path, path.read_bytes())
        except (OSError, StoreError) as exc:
            log.warning("skipping %s: %s", path, exc)
            return None
        if rec.namespace != namespace:
            return None
        return endpoint_id(rec.request), sketch(rec.request)

    def stats(self) -> StoreStats:
        entries = size = 0
        for entry in self.files():
            try:
                size += entry.path.stat().st_size
            except OSError:
                continue  # removed since it was listed
            entries += 1
        return StoreStats(entries=entries, size_bytes=size)

    # --- writing ------------------------------------------------------------------------------

    def put(self, rec: Recording) -> None:
        """Write one recording now, in the caller's thread (a no-op if the file is unchanged)."""
        if self._closed:
            raise StoreError(f"the store at {self.path} is closed", "closed")
        self.write(rec)

    def write(self, rec: Recording) -> bool:
        """`put`, saying whether the file changed (False: it already held these bytes)."""
        try:
            validate_namespace(rec.namespace)
        except ValueError as exc:
            raise StoreError(f"cannot store namespace {rec.namespace!r}: {exc}") from exc
        if parse_entry_path("d", entry_path("d", rec.key, rec.seq).split("/")[1]) is None:
            # A (non-llmreel) key too long to name a file reversibly would be written but
            # never listed again.
            raise StoreError(f"cannot store key {rec.key[:40]!r}...: keys are short digests")
        data = dumps(to_export(rec))
        path = self.file_for(rec.namespace, rec.key, rec.seq)
        for attempt in range(2):
            try:
                path.parent.mkdir(mode=0o700, exist_ok=True)
                return write_file_atomic(path, data)
            except FileNotFoundError:
                if attempt:  # a concurrent `delete` removed the emptied directory: retry once
                    raise StoreError(
                        f"cannot write {path}: its directory keeps vanishing"
                    ) from None
            except OSError as exc:
                disk_full = getattr(exc, "errno", None) == 28  # ENOSPC
                raise StoreError(
                    f"cannot write {path}: {exc}. Check free disk space and permissions; "
                    "traffic keeps flowing unrecorded.",
                    "disk_full" if disk_full else "io_error",
                ) from exc
        raise AssertionError("unreachable")

    def submit(self, rec: Recording) -> concurrent.futures.Future[None]:
        """Queue a recording for the writer thread; the future resolves once it is on disk.

        It fails at once, with reason "backlog", when the writer's queue is full.
        """
        size = JOB_OVERHEAD_BYTES + recording_weight(rec)
        with self._executor_lock:
            refused = refuse_write(self.path, self._closed, self.backlog, size)
            if refused is None:
                # `write`, not `put`: what was queued before `close` is still written by it.
                return self._writer().submit(self._write_counted, rec, size)
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        future.set_exception(refused)
        return future

    def _write_counted(self, rec: Recording, size: int) -> None:
        try:
            self.write(rec)
        finally:
            self.backlog.done(size)

    def _writer(self) -> concurrent.futures.ThreadPoolExecutor:
        # Called with `_executor_lock` held.
        if self._executor is None:
            # One thread: writes to the same entry land in submission order.
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="llmreel-dirstore-writer"
            )
        return self._executor

    def delete(self, namespace: str, key: str, seq: int = 0) -> bool:
        path = self.file_for(namespace, key, seq)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreError(f"cannot delete {path}: {exc}") from exc
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # only succeeds once the namespace is empty
        return True

    # --- lifecycle ----------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything submitted so far is written."""
        executor = self._executor
        if executor is None or self._closed:
            return
        concurrent.futures.wait([executor.submit(lambda: None)], timeout=timeout)

    def close(self, *, report_every_s: float = CLOSE_REPORT_INTERVAL_S) -> None:
        """Write what was submitted (logging every `report_every_s` what is still pending)."""
        with self._executor_lock:
            if self._closed:
                return
            self._closed = True
            executor = self._executor
        if executor is not None:
            last = executor.submit(lambda: None)  # runs once every earlier write is done
            wait_for_writer(
                lambda timeout: not concurrent.futures.wait([last], timeout).not_done,
                self.backlog,
                report_every_s,
            )
            executor.shutdown(wait=True)

    def __enter__(self) -> DirStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# Writing a whole export


@dataclass(slots=True)
class SyncReport:
    """What `sync_export` did. `refused` entries were not written (see `sync_export`)."""

    written: int = 0
    unchanged: int = 0
    removed: int = 0
    refused: list[tuple[Recording, str]] = field(default_factory=list)

    @property
    def entries(self) -> int:
        return self.written + self.unchanged


def sync_export(
    recordings: Iterable[Recording],
    root: Path,
    *,
    refuse: Callable[[Recording, bytes], str | None] | None = None,
) -> SyncReport:
    """Make `root` an export of exactly `recordings`, touching only what changed.

    Files whose content is already right are not rewritten (their mtime and inode stay), files
    of entries that are gone are removed, and so are namespace directories left empty: an
    unchanged store exports to zero git diff. `refuse(rec, data)` may return a reason not to
    write an entry (a credential in it); its existing file, if any, is left alone.
    """
    report = SyncReport()
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_file_atomic(root / MARKER_FILE, dumps(marker()))
        expected: set[str] = set()
        folded: dict[str, str] = {}
        for rec in recordings:
            relative = entry_path(rec.namespace, rec.key, rec.seq)
            dirname = relative.split("/")[0]
            other = folded.setdefault(dirname.lower(), rec.namespace)
            if other != rec.namespace:
                # On macOS and Windows these would share one directory and clobber each other.
                raise StoreError(
                    f"namespaces {other!r} and {rec.namespace!r} differ only in letter case, "
                    "so their export directories would collide on case-insensitive "
                    "filesystems. Rename one (the llmreel-namespace header) and record again."
                )
            expected.add(relative)
            data = dumps(to_export(rec))
            reason = refuse(rec, data) if refuse is not None else None
            if reason is not None:
                report.refused.append((rec, reason))
                continue
            path = root / relative
            path.parent.mkdir(mode=0o700, exist_ok=True)
            if write_file_atomic(path, data):
                report.written += 1
            else:
                report.unchanged += 1
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            if folder.name.startswith("."):
                continue
            for file in sorted(folder.iterdir()):
                if parse_entry_path(folder.name, file.name) is None:
                    continue
                if f"{folder.name}/{file.name}" not in expected:
                    file.unlink()
                    report.removed += 1
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
    except OSError as exc:
        raise StoreError(f"cannot write the export at {root}: {exc}") from exc
    return report
