"""The llmreel proxy that playground runs and probes go through, so that they take the normal
path: the proxy's cache control, recording, the exchange log, metrics and masking.

Either a running proxy (`--proxy URL`: `serve --ui` passes its own), or one started on first
use: `llmreel serve` in a child process on a free loopback port, writing to the same store. A
child process, not a thread: LMDB must not be opened twice in one process, and the caller (the
UI) already has the store open. The child stops with its parent: it watches a pipe from the
parent and shuts down when the pipe closes, so even a killed UI leaves no proxy behind.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Final

__all__ = ["ProxyProcess", "watch_parent"]

_READY: Final = re.compile(r"llmreel ready: regular (http://\S+?)[,\s]")
_START_TIMEOUT_S: Final = 60.0
# The child runs `serve` after `watch_parent()`; the string is code, not an import of the CLI.
_CHILD: Final = (
    "import llmreel.lab.proxyproc as p; p.watch_parent(); from llmreel.cli.main import main; main()"
)


def watch_parent() -> None:
    """In the child: stop (as on SIGTERM) when the parent closes our stdin, or dies."""
    import signal

    def wait() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait, name="llmreel-parent-watch", daemon=True).start()


class ProxyProcess:
    """`llmreel serve` for `store` in a child process, started by `start()` (idempotent)."""

    def __init__(
        self, store: str, *, confdir: str, hosts: Sequence[str] = (), extra: Sequence[str] = ()
    ) -> None:
        self.store = str(Path(store).resolve())
        self.confdir = confdir
        self.hosts = tuple(hosts)
        self.extra = tuple(extra)
        self.url = ""
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._config_dir: tempfile.TemporaryDirectory[str] | None = None

    def start(self) -> str:
        """The proxy's URL, starting it first if needed. Raises RuntimeError when it cannot."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None and self.url:
                return self.url
            self._start()
            return self.url

    def _start(self) -> None:
        # No llmreel.toml for this proxy: a project's fixed ports (`reverse`, `port`) would
        # collide with the proxy the project already runs. An empty file stands in for it.
        self._config_dir = tempfile.TemporaryDirectory(prefix="llmreel-lab-")
        empty = Path(self._config_dir.name, "llmreel.toml")
        empty.write_text("", encoding="utf-8")
        env = {**os.environ, "LLMREEL_CONFIG": str(empty)}
        for name in ("LLMREEL_MODE", "LLMREEL_NAMESPACE", "LLMREEL_BUDGET_USD"):
            env.pop(name, None)
        command = [
            sys.executable, "-c", _CHILD, "serve", "--mode", "auto", "--host", "127.0.0.1",
            "--port", "0", "--metrics-port", "0", "--store", self.store, "--confdir", self.confdir,
            # Another proxy may prune this store; this one never does (0: keep forever).
            "--log-retention", "0", "--quiet",
            *(f"--provider-host={h}" for h in self.hosts), *self.extra,
        ]  # fmt: skip
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                env=env, text=True)  # fmt: skip
        self._proc = proc
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.append(self._readline(proc)), daemon=True)
        reader.start()
        reader.join(_START_TIMEOUT_S)
        found = _READY.search(lines[0] + " ") if lines else None
        if found is None:
            self.stop()
            raise RuntimeError(
                "could not start an llmreel proxy for the playground (see its messages on the "
                "UI's standard error); or give a running one with --proxy URL"
            )
        self.url = found.group(1)
        threading.Thread(target=self._drain, args=(proc,), daemon=True).start()

    @staticmethod
    def _readline(proc: subprocess.Popen[str]) -> str:
        assert proc.stdout is not None
        return proc.stdout.readline()

    @staticmethod
    def _drain(proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for _ in proc.stdout:
            pass

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        self.url = ""
        if proc is not None and proc.poll() is None:
            assert proc.stdin is not None
            proc.stdin.close()  # the child's watch_parent() stops it
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout)
        if self._config_dir is not None:
            self._config_dir.cleanup()
            self._config_dir = None
