"""One worker process of `--workers N`: a whole llmreel proxy serving sockets it inherited.

The supervisor (`llmreel.cli.workers`) binds every listening socket once and starts each worker
as `python -m llmreel.cli.worker` with the sockets' descriptors and a `WorkerSpec` file. The
kernel hands each new connection to whichever worker accepts it first, so a busy worker takes
fewer. Everything else is the single-process proxy: the same addon, options and store.

**The seam.** mitmproxy 12 binds each TCP listener itself, with a plain
`asyncio.start_server(handler, host, port)` in `AsyncioServerInstance.listen`
(mitmproxy/proxy/mode_servers.py), and has no option to serve a socket it was given.
`serve_inherited` replaces that one method, in worker processes only, so that an address the
supervisor bound is served from its inherited socket; any other address goes to mitmproxy's own
code. `tests/test_workers.py` checks the seam against the pinned mitmproxy version.
"""

from __future__ import annotations

import asyncio
import functools
import os
import pickle
import signal
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llmreel.cli.server import ProxyServer, ProxySettings, StartupError
from llmreel.cli.setup import setup_logging
from llmreel.metering.metrics import multiprocess_total
from llmreel.storage.counters import SharedCounter


@dataclass(slots=True)
class WorkerSpec:
    """What the supervisor tells a worker, pickled onto its standard input (never written to a
    file: the settings can hold secrets)."""

    index: int
    settings: ProxySettings
    sockets: dict[tuple[str, int], int]
    """(host, port) of each listener → the inherited descriptor of its bound socket."""
    ready_fd: int
    """Write end of the pipe on which the worker says it serves: one line with its index."""
    report_path: str
    shared_dir: str
    """The supervisor's private directory: metrics files, the shared sequence counter."""
    """Where the worker leaves its run report (pickled) when it stops."""
    detailed_report: bool = False
    log_level: tuple[bool, bool] = (False, False)
    """(quiet, verbose), as given to the supervisor."""
    extra_env: dict[str, str] = field(default_factory=dict)


def serve_inherited(sockets: Mapping[tuple[str, int], socket.socket]) -> None:
    """The seam: make mitmproxy serve `sockets` instead of binding their addresses again."""
    from mitmproxy.proxy import mode_servers

    cls: Any = mode_servers.AsyncioServerInstance
    original = cls.listen

    async def listen(self: Any, host: str, port: int) -> list[Any]:
        sock = sockets.get((host, port))
        if sock is None or self.mode.transport_protocol == "udp":
            return list(await original(self, host, port))
        # TCP only: a reverse listener for an https upstream is "both" in mitmproxy (it would
        # add a QUIC/UDP server on the port), which N processes cannot share. LLM clients speak
        # HTTP/1.1 or HTTP/2 to the proxy.
        return [await asyncio.start_server(self.handle_stream, sock=sock)]

    cls.listen = listen


async def _work(spec: WorkerSpec) -> int:
    sockets = {addr: socket.socket(fileno=fd) for addr, fd in spec.sockets.items()}
    serve_inherited(sockets)
    server = ProxyServer(spec.settings)
    engine = server.recorder.engine
    engine.flight_locks = True  # identical misses in sibling workers go upstream once
    if spec.settings.sequence:
        engine.occurrences = SharedCounter(os.path.join(spec.shared_dir, "sequence"))
    if spec.settings.budget_usd:
        metrics_dir = os.path.join(spec.shared_dir, "metrics")
        engine.total_spent = functools.partial(multiprocess_total, metrics_dir, "llmreel_spend_usd")
    report = server.recorder.report
    report.detailed = spec.detailed_report
    report.run_id = spec.settings.run_id
    try:
        await server.start()
    except StartupError as exc:
        print(f"llmreel worker {spec.index}: {exc}", file=sys.stderr, flush=True)
        return 1
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, server.shutdown)
    os.write(spec.ready_fd, f"{spec.index}\n".encode())
    os.close(spec.ready_fd)
    await server.wait()
    await server.stop()
    # The supervisor merges the workers' reports (`llmreel run`); written last, after the store
    # has saved everything.
    tmp = f"{spec.report_path}.tmp"
    with open(tmp, "wb") as f:
        pickle.dump(report, f)
    os.replace(tmp, spec.report_path)
    return 0


def main() -> None:
    spec: WorkerSpec = pickle.load(sys.stdin.buffer)
    setup_logging(*spec.log_level, name=f"worker {spec.index}")
    # SIGINT from a terminal reaches the whole process group; the supervisor decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(asyncio.run(_work(spec)))


if __name__ == "__main__":
    main()
