"""Running mitmproxy with the llmreel addon from our own code (for `llmreel serve` and `run`)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mitmproxy import exceptions
from mitmproxy.options import Options
from mitmproxy.tools.dump import DumpMaster

from llmreel.cli.clientenv import private_dir
from llmreel.cli.reverse import Reverse
from llmreel.engine.options import (
    DEFAULT_MAX_RECORD_BYTES,
    DEFAULT_SHARED_MAX_BYTES,
    DEFAULT_SHARED_TIMEOUT_MS,
)
from llmreel.storage.shared import masked

log = logging.getLogger("llmreel")

DEFAULT_CONFDIR = "~/.mitmproxy"


class StartupError(Exception):
    """The proxy could not start; the message says why and what to do."""


@dataclass(slots=True)
class ProxySettings:
    mode: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8080
    reverse: Sequence[Reverse] = ()
    store: str = ".llmreel"
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    confdir: str = DEFAULT_CONFDIR
    ssl_insecure: bool = False
    namespace: str = "default"
    hosts: Sequence[str] = ()
    ignore_fields: Sequence[str] = ()
    prices: str | None = None
    sequence: bool = False
    log_retention: str = "30d"
    log_file: str | None = None
    log_bodies: bool = False
    log_embeddings: bool = True
    explain_misses: bool = False
    scope_by_credential: bool = False
    max_age: str = ""
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    run_id: str = ""
    budget_usd: str = ""
    replay_pace: str = "fast"
    control_port: int = -1
    """The control API's port on 127.0.0.1 (0: a free one; -1: off)."""
    otlp_endpoint: str = ""
    otlp_content: bool = False
    proxy_auth: str | None = None
    shared: str = ""
    """The shared tier's Redis URL (docs/shared.md); empty: off."""
    shared_timeout_ms: int = DEFAULT_SHARED_TIMEOUT_MS
    shared_max_bytes: int = DEFAULT_SHARED_MAX_BYTES
    sets: Sequence[str] = ()
    """Raw mitmproxy `NAME=VALUE` options, applied last."""


@dataclass(slots=True)
class Listener:
    kind: str
    url: str
    upstream: str | None = None


@dataclass(slots=True)
class Running:
    """What a started proxy listens on."""

    listeners: list[Listener] = field(default_factory=list)
    metrics_url: str | None = None
    control_url: str | None = None
    ca_cert: str = ""
    store: str = ""
    mode: str = ""
    workers: int = 1
    shared: str = ""
    """The shared tier's URL, its password masked."""

    @property
    def proxy_url(self) -> str:
        return next(li.url for li in self.listeners if li.kind == "regular")

    def summary(self) -> str:
        parts = []
        for li in self.listeners:
            parts.append(f"{li.kind} {li.url}" + (f" -> {li.upstream}" if li.upstream else ""))
        return (
            f"llmreel ready: {', '.join(parts)} | mode {self.mode} | "
            + (f"workers {self.workers} | " if self.workers > 1 else "")
            + f"store {self.store} | "
            f"metrics {self.metrics_url or 'off'} | "
            + (f"control {self.control_url} | " if self.control_url else "")
            + (f"shared {self.shared} | " if self.shared else "")
            + f"CA {self.ca_cert}"
        )


class ProxyServer:
    """One in-process mitmproxy with the llmreel addon. Create and use inside a running loop."""

    def __init__(self, settings: ProxySettings, recorder: Any | None = None) -> None:
        from llmreel.addons.recorder import Recorder

        self.settings = settings
        self.recorder = recorder if recorder is not None else Recorder()
        self.master: DumpMaster | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Running:
        s = self.settings
        # mitmproxy creates its confdir with a plain mkdir; the CA key must not sit in a
        # directory others can write to.
        private_dir(s.confdir)
        master = DumpMaster(Options(), with_termlog=False, with_dumper=False)
        # We report startup errors ourselves instead of letting errorcheck exit the process.
        if (errorcheck := master.addons.get("errorcheck")) is not None:
            master.addons.remove(errorcheck)
        master.addons.add(self.recorder)
        modes = [f"regular@{hostport(s.host, s.port)}"]
        # mitmproxy refuses two listeners on one address, and "port 0" counts as one address.
        modes += [
            f"reverse:{r.upstream}@{hostport(s.host, r.port or _free_port(s.host))}"
            for r in s.reverse
        ]
        try:
            master.options.update(
                mode=modes,
                confdir=s.confdir,
                ssl_insecure=s.ssl_insecure,
                connection_strategy="lazy",
                llmreel_mode=s.mode,
                llmreel_store=s.store,
                llmreel_namespace=s.namespace,
                llmreel_metrics_host=s.metrics_host,
                llmreel_metrics_port=s.metrics_port,
                llmreel_hosts=list(s.hosts),
                llmreel_ignore_fields=list(s.ignore_fields),
                llmreel_prices=s.prices,
                llmreel_sequence=s.sequence,
                llmreel_log_retention=s.log_retention,
                llmreel_log_file=s.log_file,
                llmreel_log_bodies=s.log_bodies,
                llmreel_log_embeddings=s.log_embeddings,
                llmreel_explain_misses=s.explain_misses,
                llmreel_scope_by_credential=s.scope_by_credential,
                llmreel_max_age=s.max_age,
                llmreel_max_record_bytes=s.max_record_bytes,
                llmreel_run_id=s.run_id,
                llmreel_budget_usd=s.budget_usd,
                llmreel_replay_pace=s.replay_pace,
                llmreel_control_port=s.control_port,
                llmreel_shared=s.shared,
                llmreel_shared_timeout_ms=s.shared_timeout_ms,
                llmreel_shared_max_bytes=s.shared_max_bytes,
                llmreel_otlp_endpoint=s.otlp_endpoint,
                llmreel_otlp_content=s.otlp_content,
            )
            if s.proxy_auth:
                master.options.update(proxyauth=s.proxy_auth)
            if s.sets:
                master.options.set(*s.sets)
        except exceptions.OptionsError as exc:
            await _close_master(master)
            raise StartupError(str(exc)) from exc
        self.master = master
        self._task = asyncio.create_task(master.run())
        proxyserver = master.addons.get("proxyserver")
        # setup_servers() completes before the running hook; wait for the recorder to see it.
        for _ in range(400):
            if self._task.done() or self.recorder.is_running:
                break
            await asyncio.sleep(0.025)
        failures = [str(srv.last_exception) for srv in proxyserver.servers if srv.last_exception]
        if self._task.done() or failures or not self.recorder.is_running:
            await self.stop()
            reason = "; ".join(failures) or "mitmproxy did not start"
            raise StartupError(
                f"could not start the proxy: {reason}. Is the port in use? Pick another with "
                "--port (or --reverse URL@PORT)."
            )
        if self.recorder.control_error:
            await self.stop()
            raise StartupError(f"{self.recorder.control_error}. Pick another --control-port.")
        # Everything alive now (mitmproxy, the price tables, ...) lives as long as the process:
        # keep it out of the garbage collector's full collections, which took ~60 ms each.
        gc.freeze()
        running = Running(
            store=str(Path(s.store).resolve()),
            mode=s.mode,
            shared=masked(s.shared) if s.shared else "",
            ca_cert=str(Path(os.path.expanduser(s.confdir)) / "mitmproxy-ca-cert.pem"),
        )
        for srv in proxyserver.servers:
            host, port = srv.listen_addrs[0][:2]
            url = f"http://{hostport(host, port)}"
            upstream = getattr(srv.mode, "data", None) if srv.mode.type_name == "reverse" else None
            running.listeners.append(Listener(srv.mode.type_name, url, upstream))
        if self.recorder.metrics_port:
            running.metrics_url = (
                f"http://{hostport(s.metrics_host, self.recorder.metrics_port)}/metrics"
            )
        running.control_url = self.recorder.engine.control.url
        return running

    async def wait(self) -> None:
        if self._task is not None:
            await self._task

    def shutdown(self) -> None:
        if self.master is not None:
            self.master.shutdown()

    async def stop(self) -> None:
        if self.master is None or self._task is None:
            return
        # Close client connections first and let their handlers finish; cancelling them at
        # loop shutdown instead prints CancelledError tracebacks for every keep-alive client.
        proxyserver = self.master.addons.get("proxyserver")
        for handler in list(proxyserver.connections.values()):
            io = handler.transports.get(handler.client)
            if io is not None and io.writer is not None:
                with contextlib.suppress(Exception):
                    io.writer.close()
        for _ in range(100):
            if not proxyserver.connections:
                break
            await asyncio.sleep(0.02)
        self.master.shutdown()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.master = None


async def _close_master(master: DumpMaster) -> None:
    with contextlib.suppress(Exception):
        await master.done()


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
