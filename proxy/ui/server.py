"""Running the UI: in the foreground (`llmreel ui`), or beside a proxy in a process of its own
(`llmreel serve --ui`, `llmreel run --ui`), so that indexing and rendering never hold the proxy's
event loop or its GIL.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import Final

import uvicorn

from llmreel.core.wire import is_loopback
from llmreel.ui.app import UiSettings, create_app

__all__ = ["DEFAULT_PORT", "PROXY_ENV", "UiProcess", "check_binding", "parse_auth", "serve_forever"]

DEFAULT_PORT: Final = 9465
READY: Final = "llmreel ui ready: "
#: The UI's basic-auth credentials reach a child process through its environment, not its argv
#: (which `ps` shows to every user).
AUTH_ENV: Final = "LLMREEL_UI_AUTH"
#: The proxy the playground goes through, for the same reason (its URL may hold proxy auth).
PROXY_ENV: Final = "LLMREEL_UI_PROXY"
_START_TIMEOUT_S: Final = 60.0


def parse_auth(value: str | None) -> tuple[str, str] | None:
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ValueError("--auth takes USER:PASS, both non-empty")
    return user, password


def check_binding(host: str, auth: tuple[str, str] | None) -> None:
    """Refuse to show prompts and answers to other machines without a password."""
    if not is_loopback(host) and auth is None:
        raise ValueError(
            f"--host {host} would show every prompt and answer to other machines. "
            "Add --auth USER:PASS (HTTP basic auth), or bind to 127.0.0.1."
        )


def url_of(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


async def serve_forever(settings: UiSettings, port: int, *, on_ready: object = None) -> None:
    """Serve until SIGINT or SIGTERM (uvicorn's handlers), printing one ready line first."""
    config = uvicorn.Config(
        create_app(settings), host=settings.host, port=port, log_level="warning",
        access_log=False, timeout_graceful_shutdown=2, lifespan="on",
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task  # startup failed: its error (or SystemExit) surfaces here
            raise RuntimeError(f"the UI could not listen on {settings.host}:{port}")
        await asyncio.sleep(0.05)
    bound = port
    for listener in server.servers:
        for sock in listener.sockets:
            bound = int(sock.getsockname()[1])
    print(READY + url_of(settings.host, bound), flush=True)
    await task


@dataclass
class UiProcess:
    """`llmreel ui` as a child process of a proxy; `url` is set once it listens."""

    store: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    auth: tuple[str, str] | None = None
    proxy: str = ""
    offline: bool = False
    confdir: str = "~/.mitmproxy"
    url: str = ""
    _proc: subprocess.Popen[str] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> str:
        """Start it and wait for its ready line; returns the URL. Raises RuntimeError if it fails."""
        env = dict(os.environ)
        if self.auth is not None:
            env[AUTH_ENV] = f"{self.auth[0]}:{self.auth[1]}"
        if self.proxy:
            env[PROXY_ENV] = self.proxy
        command = [sys.executable, "-c", "from llmreel.cli.main import main; main()", "ui",
                   "--store", self.store, "--host", self.host, "--port", str(self.port),
                   "--confdir", self.confdir, *(["--offline"] if self.offline else [])]  # fmt: skip
        self._proc = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, text=True)
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self._readline()), daemon=True)
        reader.start()
        reader.join(_START_TIMEOUT_S)
        if not line or not line[0].startswith(READY):
            self.stop()
            raise RuntimeError(
                f"the UI did not start on port {self.port} (see the messages above); "
                "pick another --ui-port"
            )
        self.url = line[0][len(READY) :].strip()
        # Keep draining its output so that it never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()
        return self.url

    def _readline(self) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        return self._proc.stdout.readline()

    def _drain(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for _ in self._proc.stdout:
            pass

    def stop(self, timeout: float = 10.0) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
