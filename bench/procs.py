"""Start, watch and stop the benchmark's server processes; nothing outlives the run.

Every child gets its own session (process group), so stopping it stops whatever it spawned, and
is asked to die with its parent (PR_SET_PDEATHSIG) in case the bench itself is killed.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def raise_priority(niceness: int = -10) -> bool:
    """Run this process (and what it starts) ahead of unrelated jobs on a shared box."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
    except OSError:
        return False
    return True


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    ticks = os.sysconf("SC_CLK_TCK")
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])
    return (total - idle) / ticks, total / ticks


def rss_anon_mb(pid: int) -> float:
    """The process's own memory (RssAnon), in MiB: RSS without the mapped files (LMDB's pages,
    which are the kernel's page cache, shared by every process that maps the store)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no RssAnon for pid {pid}")


def rss_mb(pid: int) -> float:
    """Resident set size of one process, in MiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def worker_rss_mb(self) -> list[float]:
        """RSS of each process below this one (the workers of llmreel --workers N)."""
        return [round(rss_mb(p), 1) for p in descendants(self.pid)]

    def worker_rss_anon_mb(self) -> list[float]:
        return [round(rss_anon_mb(p), 1) for p in descendants(self.pid)]


class Procs:
    """A set of running servers; use as a context manager so every one is stopped."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.running: list[Proc] = []

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def spawn(self, name: str, argv: Sequence[str], port: int) -> Proc:
        """Start `argv`, which will listen on `port`; see `wait_ready`."""
        log_path = self.logdir / f"{name}.log"
        # Users' installs have compiled bytecode; without it every start recompiles mitmproxy.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        with open(log_path, "wb") as out:
            popen = subprocess.Popen(
                list(argv), cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
        proc = Proc(name, popen, port, log_path)
        self.running.append(proc)
        return proc

    def wait_ready(self, *procs: Proc, timeout: float = 60.0) -> None:
        """Wait until every one of `procs` accepts connections on its port."""
        deadline = time.monotonic() + timeout
        for proc in procs:
            while True:
                if proc.popen.poll() is not None:
                    tail = proc.log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{tail}")
                try:
                    with socket.create_connection((HOST, proc.port), timeout=0.5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"{proc.name} did not listen on {proc.port} within {timeout}s"
                        ) from None
                    time.sleep(0.05)

    def start(self, name: str, argv: Sequence[str], port: int) -> Proc:
        proc = self.spawn(name, argv, port)
        self.wait_ready(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        if proc in self.running:
            self.running.remove(proc)
        if proc.popen.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            log(f"{proc.name} ignored SIGTERM; killing it")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.popen.wait(timeout=5)
        except ProcessLookupError:
            pass

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):
            self.stop(proc)


def upstream_argv(port: int) -> list[str]:
    return [sys.executable, "-m", "bench.upstream", "--port", str(port)]


def mitmdump_argv(
    port: int, upstream_port: int, confdir: Path, script: str | None = None
) -> list[str]:
    argv = [
        str(BIN / "mitmdump"), "-q",
        "--mode", f"reverse:http://{HOST}:{upstream_port}@{HOST}:{port}",
        "--set", "connection_strategy=lazy", "--set", f"confdir={confdir}",
    ]  # fmt: skip
    if script is not None:
        argv += ["-s", str(ROOT / "bench" / "addons" / script)]
    return argv


def llmreel_argv(
    port: int,
    upstream_port: int,
    store: Path,
    confdir: Path,
    mode: str = "auto",
    workers: int = 1,
) -> list[str]:
    return [
        str(BIN / "llmreel"), "serve", "--mode", mode, "--port", str(free_port()),
        "--metrics-port", "0", "--store", str(store), "--confdir", str(confdir),
        "--reverse", f"http://{HOST}:{upstream_port}@{port}", "--workers", str(workers),
    ]  # fmt: skip


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (a supervisor's workers)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return found
    for task in tasks:
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of `pid` and every live process below it (llmreel with --workers)."""
    total = 0.0
    for p in [pid, *descendants(pid)]:
        try:
            total += cpu_seconds(p)
        except FileNotFoundError:
            continue
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks
