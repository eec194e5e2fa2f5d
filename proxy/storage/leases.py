"""Single flight across the processes of one machine: a lock file per flight.

Worker processes (`--workers N`), or two proxies opened on one store, share recordings through
the store; this makes them share the single flight too. The leader of a flight holds an
exclusive `flock` on a file named after the flight; the kernel drops the lock when the leader's
process dies, so a crashed leader frees its flight at once, and a hung one is bounded by the
followers' own deadline (they then go upstream themselves).

The files live in a private directory named after the store's real path, in the runtime
directory (never in the store itself, which may be an export directory kept in git). The leader
removes its file on release; `lead` re-checks, after locking, that the file it locked is still
the one at that path, so a follower that opened a file just removed cannot lead beside the
process that created its successor.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import tempfile
from pathlib import Path

from llmreel.core.singleflight import RemoteLease

log = logging.getLogger("llmreel")

__all__ = ["FileFlights", "FileLease", "lease_dir"]


def lease_dir(store: str) -> Path:
    """The lock-file directory of a store: the same for every process that opens that store."""
    real = os.path.realpath(os.path.expanduser(store))
    digest = hashlib.blake2b(real.encode(), digest_size=8).hexdigest()
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"llmreel-{os.getuid()}-flights-{digest}"


class FileLease:
    """A held lock file. `release` unlinks it and drops the lock; idempotent."""

    __slots__ = ("_fd", "_path")

    def __init__(self, fd: int, path: Path) -> None:
        self._fd = fd
        self._path = path

    def release(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
        os.close(self._fd)  # closing drops the flock
        self._fd = -1


class _Nothing:
    """The lease of a tier that could not take part (the directory is unusable)."""

    def release(self) -> None:
        return None


class FileFlights:
    """`RemoteFlights` over lock files. Each call is two or three non-blocking syscalls."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._broken = False

    def _path(self, key: str) -> Path:
        return self.directory / (
            hashlib.blake2b(key.encode(), digest_size=16).hexdigest() + ".lock"
        )

    def _open(self, path: Path) -> int:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    async def lead(self, key: str) -> RemoteLease | None:
        if self._broken:
            return _Nothing()
        path = self._path(key)
        try:
            while True:
                fd = self._open(path)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    os.close(fd)
                    if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                        return None
                    raise
                try:
                    same = os.fstat(fd).st_ino == os.stat(path).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    return FileLease(fd, path)
                os.close(fd)  # its leader removed it after we opened it: lock the new one
        except OSError as exc:
            # Single flight is a saving, not a condition of serving: go on without it.
            self._broken = True
            log.warning("single flight across processes is off: %s (%s)", exc, self.directory)
            return _Nothing()

    async def held(self, key: str) -> bool:
        if self._broken:
            return False
        try:
            fd = os.open(self._path(key), os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return False  # no file: nobody leads it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
        return False
