"""`--workers N`: N proxy processes behind one set of listening sockets, one store, one /metrics.

The supervisor (this module, in the `llmreel serve`/`run` process) binds every listener once,
opens the store once (so it exists before N processes race to create it), and starts N workers
(`llmreel.cli.worker`) that inherit the sockets. It does not proxy anything itself:

- **Metrics.** Workers write their metrics to files in a private directory
  (prometheus_client's multiprocess mode); the supervisor's `/metrics` sums them with
  `MultiProcessCollector`, and adds what only it knows: the store's size and the workers.
- **Supervision.** A worker that dies is logged, counted (`llmreel_worker_restarts_total`) and
  started again; one that keeps dying at start-up stops the proxy with an error instead of
  looping. SIGINT or SIGTERM stops every worker (each flushes its store writes and log), then
  the supervisor exits 0.
- **Shared state** lives where every process sees it: recordings and the exchange log in the
  store (LMDB serves many processes), single flight in lock files beside it
  (`llmreel.storage.leases`), sequence numbers in the store's counter. The run report of
  `llmreel run` is the sum of the workers' reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client import multiprocess as prom_multiprocess

from llmreel.cli.server import Listener, ProxySettings, Running, StartupError, hostport
from llmreel.cli.worker import WorkerSpec
from llmreel.metering.exporter import MetricsServer
from llmreel.metering.metrics import StoreCollector, WorkerMetrics
from llmreel.metering.report import RunReport
from llmreel.storage.lmdbstore import StoreError
from llmreel.storage.shared import masked
from llmreel.storage.stores import open_store

log = logging.getLogger("llmreel")

#: How long a worker may take to start serving.
START_TIMEOUT_S = 60.0
#: How long stopping workers may take before they are killed (each flushes its writes first).
STOP_TIMEOUT_S = 30.0
#: A worker that dies this soon after starting, this many times in a row, is not restarted.
CRASH_WINDOW_S = 5.0
CRASH_LIMIT = 5


def worker_count(value: str) -> int:
    """`auto` (the cores this process may use) or a positive number."""
    if value == "auto":
        return max(len(os.sched_getaffinity(0)), 1)
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"--workers takes a positive number or auto, not {value!r}")
    return count


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise StartupError(
            f"could not listen on {hostport(host, port)}: {exc.strerror or exc}. Is the port in "
            "use? Pick another with --port (or --reverse URL@PORT)."
        ) from exc
    sock.set_inheritable(True)
    return sock


@dataclasses.dataclass(slots=True)
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    started: float
    watcher: asyncio.Task[None] | None = None
    ready: bool = False


class Supervisor:
    """Runs `workers` proxy processes for `settings`. Create and use inside a running loop.

    The same surface as `ProxyServer` for `serve` and `run`: `start`, `wait`, `shutdown`,
    `stop`, and the merged `report` once stopped.
    """

    def __init__(
        self,
        settings: ProxySettings,
        workers: int,
        *,
        detailed_report: bool = False,
        log_level: tuple[bool, bool] = (False, False),
    ) -> None:
        self.settings = settings
        self.count = workers
        self.detailed_report = detailed_report
        self.log_level = log_level
        self.report = RunReport(run_id=settings.run_id, detailed=detailed_report)
        self.store: Any = None
        self.restarts = 0
        self.registry = CollectorRegistry()
        self.metrics = WorkerMetrics(self.registry)
        self._metrics_server = MetricsServer(self.registry)
        self._dir: Path | None = None
        self.metrics_dir = ""
        """Where the workers write their metrics (prometheus_client's multiprocess mode)."""
        self._sockets: dict[tuple[str, int], socket.socket] = {}
        self._listeners: list[Listener] = []
        self._workers: dict[int, _Worker] = {}
        self._crashes: dict[int, int] = {}
        self._stopping = asyncio.Event()
        self._failed: str | None = None

    @property
    def pids(self) -> list[int]:
        """The workers serving now (started, and not dead)."""
        return [
            w.process.pid
            for w in self._workers.values()
            if w.ready and w.process.returncode is None
        ]

    async def start(self) -> Running:
        s = self.settings
        self._dir = Path(tempfile.mkdtemp(prefix="llmreel-workers-"))  # private: mode 0700
        self.metrics_dir = str(self._dir / "metrics")
        os.mkdir(self.metrics_dir)
        try:
            self.store = open_store(s.store)
        except StoreError as exc:
            raise StartupError(str(exc)) from exc
        try:
            self._bind_listeners()
            # Started together: each takes a second or more to import mitmproxy.
            await asyncio.gather(*(self._spawn(index) for index in range(self.count)))
            self._serve_metrics()
        except BaseException:
            await self.stop()
            raise
        for worker in self._workers.values():
            worker.watcher = asyncio.create_task(self._watch(worker))
        running = Running(
            listeners=list(self._listeners),
            store=str(Path(s.store).resolve()),
            mode=s.mode,
            ca_cert=str(Path(os.path.expanduser(s.confdir)) / "mitmproxy-ca-cert.pem"),
            workers=self.count,
            shared=masked(s.shared) if s.shared else "",
        )
        if self._metrics_server.port:
            running.metrics_url = (
                f"http://{hostport(s.metrics_host, self._metrics_server.port)}/metrics"
            )
        return running

    def _bind_listeners(self) -> None:
        s = self.settings
        regular = _bind(s.host, s.port)
        self._add(regular, "regular")
        reverse = []
        for r in s.reverse:
            sock = _bind(s.host, r.port)
            self._add(sock, "reverse", r.upstream)
            reverse.append(dataclasses.replace(r, port=sock.getsockname()[1]))
        # The workers ask mitmproxy for exactly the addresses bound here: the seam matches them.
        self._worker_settings = dataclasses.replace(
            s, port=regular.getsockname()[1], reverse=reverse, metrics_port=0, control_port=-1
        )

    def _add(self, sock: socket.socket, kind: str, upstream: str | None = None) -> None:
        host, port = sock.getsockname()[:2]
        self._sockets[(self.settings.host, port)] = sock
        self._listeners.append(Listener(kind, f"http://{hostport(host, port)}", upstream))

    def _serve_metrics(self) -> None:
        s = self.settings
        assert self._dir is not None
        prom_multiprocess.MultiProcessCollector(self.registry, path=self.metrics_dir)  # type: ignore[no-untyped-call]
        store = self.store
        self.registry.register(StoreCollector(lambda: _stats(store)))
        self._metrics_server.start(s.metrics_host, s.metrics_port)
        if self._metrics_server.error:
            raise StartupError(
                f"{self._metrics_server.error}. Pick another --metrics-port (0 turns it off)."
            )

    async def _spawn(self, index: int) -> None:
        assert self._dir is not None
        read_fd, write_fd = os.pipe()
        spec = WorkerSpec(
            index=index,
            settings=self._worker_settings,
            sockets={addr: sock.fileno() for addr, sock in self._sockets.items()},
            ready_fd=write_fd,
            report_path=str(self._dir / f"report-{index}.pickle"),
            shared_dir=str(self._dir),
            detailed_report=self.detailed_report,
            log_level=self.log_level,
        )
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir}
        try:
            # The spec goes through the worker's standard input, never a file: its settings
            # can hold secrets (--proxy-auth, a --shared URL's password).
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "llmreel.cli.worker", env=env, stdin=asyncio.subprocess.PIPE,
                pass_fds=[write_fd, *spec.sockets.values()],
            )  # fmt: skip
            assert process.stdin is not None
            process.stdin.write(pickle.dumps(spec))
            await process.stdin.drain()
            process.stdin.close()
        finally:
            os.close(write_fd)
        worker = _Worker(index, process, time.monotonic())
        self._workers[index] = worker
        try:
            ready = await asyncio.wait_for(_read_line(read_fd), START_TIMEOUT_S)
        except TimeoutError:
            ready = b""
        if ready.strip() != str(index).encode():
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise StartupError(
                f"worker {index} did not start (exit status {process.returncode}); its error "
                "is above."
            )
        worker.ready = True
        self.metrics.workers.set(len(self.pids))

    async def _watch(self, worker: _Worker) -> None:
        """Restart `worker` whenever it dies, until the supervisor stops."""
        while True:
            status = await worker.process.wait()
            if self._stopping.is_set():
                return
            pid = worker.process.pid
            prom_multiprocess.mark_process_dead(pid, self.metrics_dir)  # type: ignore[no-untyped-call]
            self.metrics.workers.set(len(self.pids))
            lived = time.monotonic() - worker.started
            crashes = self._crashes.get(worker.index, 0) + 1 if lived < CRASH_WINDOW_S else 1
            self._crashes[worker.index] = crashes
            log.error(
                "worker %d (pid %d) died with status %s after %.1fs; restarting it", worker.index,
                pid, status, lived,
            )  # fmt: skip
            self.restarts += 1
            self.metrics.restarts.inc()
            if crashes >= CRASH_LIMIT:
                self._failed = (
                    f"worker {worker.index} died {crashes} times in a row within "
                    f"{CRASH_WINDOW_S:.0f}s of starting; stopping. Its errors are above."
                )
                log.error("%s", self._failed)
                self._stopping.set()
                return
            try:
                await self._spawn(worker.index)
            except StartupError as exc:
                if self._stopping.is_set():
                    return
                log.error("%s", exc)  # and counted as another crash on the next turn
            worker = self._workers[worker.index]

    async def wait(self) -> None:
        """Until `shutdown` (or a worker that cannot be kept alive)."""
        await self._stopping.wait()

    def shutdown(self) -> None:
        self._stopping.set()

    @property
    def private_dir(self) -> Path | None:
        """The supervisor's private directory (metrics files, reports, the sequence counter)."""
        return self._dir

    @property
    def failed(self) -> str | None:
        """Why the supervisor gave up, if it did."""
        return self._failed

    async def stop(self) -> None:
        """Stop every worker (each saves what it has), merge their reports, free everything."""
        self._stopping.set()
        workers = list(self._workers.values())
        for w in workers:
            if w.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    w.process.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                await asyncio.wait_for(w.process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                log.error(
                    "worker %d did not stop within %.0fs; killing it", w.index, STOP_TIMEOUT_S
                )
                with contextlib.suppress(ProcessLookupError):
                    w.process.kill()
                await w.process.wait()
            if w.watcher is not None:
                w.watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await w.watcher
        self._workers.clear()
        self._merge_reports()
        self._metrics_server.stop()
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def close_store(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def _merge_reports(self) -> None:
        if self._dir is None:
            return
        for path in sorted(self._dir.glob("report-*.pickle")):
            with path.open("rb") as f:
                part: RunReport = pickle.load(f)
            self.report.merge(part)


def _stats(store: Any) -> Any:
    try:
        return store.stats() if store is not None else None
    except StoreError:
        return None


async def _read_line(fd: int) -> bytes:
    """One line from a pipe, without blocking the loop; b"" when its writer closed it first."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    try:
        return await reader.readline()
    finally:
        transport.close()
