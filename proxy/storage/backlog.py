"""What a store's writer thread still has to write: a bounded backlog, and waiting for it to drain.

The proxy hands recordings to a writer thread so that its event loop never waits on the disk.
If the disk is slower than the traffic for long, the queue would grow until the process runs
out of memory. So the queue is bounded, by bytes and by jobs, and the policy when it is full is
to **fail fast**: the new write's future fails at once with `StoreError(reason="backlog")`. The
call it belonged to is answered as usual (llmreel is never the reason a call fails); only its
recording is lost, and that loss is counted (`llmreel_store_write_errors_total{reason="backlog"}`)
and logged. Waiting instead would stall the event loop, and with it every other call in flight.

A job bigger than the whole bound is still taken when the queue is empty, so one huge recording
is written rather than refused forever: memory stays within the bound or one job, whichever is
larger.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

__all__ = [
    "CLOSE_REPORT_INTERVAL_S",
    "DEFAULT_BACKLOG_BYTES",
    "DEFAULT_BACKLOG_JOBS",
    "JOB_OVERHEAD_BYTES",
    "Backlog",
    "wait_for_writer",
]

#: Bytes of recordings (and log entries) that may wait for the disk: minutes of heavy traffic.
DEFAULT_BACKLOG_BYTES = 256 << 20
#: Writes that may wait for the disk, however small.
DEFAULT_BACKLOG_JOBS = 50_000
#: What a queued job costs besides its payload (the job, its future, its keys).
JOB_OVERHEAD_BYTES = 512
#: How often `close` says what it is still waiting for.
CLOSE_REPORT_INTERVAL_S = 10.0
_REFUSAL_REPORT_INTERVAL_S = 10.0


class Backlog:
    """Jobs and bytes handed to a writer thread and not yet written (or failed).

    Thread-safe: `admit` runs in the threads that submit, `done` in the writer.
    """

    def __init__(
        self,
        path: str,
        *,
        max_bytes: int = DEFAULT_BACKLOG_BYTES,
        max_jobs: int = DEFAULT_BACKLOG_JOBS,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_jobs = max_jobs
        self.jobs = 0
        self.bytes = 0
        self.refused = 0
        """Jobs refused since the store was opened."""
        self._lock = threading.Lock()
        self._refused_unreported = 0
        self._last_report = -_REFUSAL_REPORT_INTERVAL_S

    def admit(self, size: int) -> bool:
        """Count a job of about `size` bytes in, or say False (and log, now and then) if full."""
        with self._lock:
            full = self.jobs >= self.max_jobs or self.bytes + size > self.max_bytes
            if full and self.jobs:
                self.refused += 1
                self._refused_unreported += 1
                self._report_refusals()
                return False
            self.jobs += 1
            self.bytes += size
            return True

    def done(self, size: int) -> None:
        """Count out a job that `admit` took, once it is written or has failed."""
        with self._lock:
            self.jobs -= 1
            self.bytes -= size

    def pending(self) -> tuple[int, int]:
        """(jobs, bytes) not yet written."""
        with self._lock:
            return self.jobs, self.bytes

    def refusal(self) -> str:
        """Why a job was refused, and what to do, for its `StoreError`."""
        return (
            f"the write queue of the store at {self.path} is full ({self.jobs} writes, "
            f"{_mib(self.bytes)} waiting for the disk): this write is dropped and traffic keeps "
            "flowing. The disk is slower than the traffic: check its health and free space, "
            "or put the store on a faster disk."
        )

    def _report_refusals(self) -> None:
        # At most one line per interval: under a stuck disk every write is refused.
        now = time.monotonic()
        if now - self._last_report < _REFUSAL_REPORT_INTERVAL_S:
            return
        self._last_report = now
        log.warning(
            "%s (%d dropped since the last report)", self.refusal(), self._refused_unreported
        )
        self._refused_unreported = 0


def wait_for_writer(
    finished: Callable[[float], bool], backlog: Backlog, report_every_s: float
) -> None:
    """Wait until `finished(timeout)` says the writer is done, however long that takes.

    Closing a store under a writer that is still inside a transaction can crash the process,
    so there is no time limit; instead every `report_every_s` a warning says what is pending,
    so that a slow shutdown explains itself.
    """
    started = time.monotonic()
    while not finished(report_every_s):
        jobs, size = backlog.pending()
        log.warning(
            "closing the store at %s: still waiting for %d writes (%s) to reach the disk, "
            "after %.0f s. A stuck disk? Check it; killing the process loses these writes.",
            backlog.path, jobs, _mib(size), time.monotonic() - started,
        )  # fmt: skip


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"
