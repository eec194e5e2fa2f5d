"""Shared fixtures: a fake upstream, and a real llmreel proxy running in a background thread."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmreel.cli.clientenv import write_bundle
from llmreel.cli.server import ProxyServer, ProxySettings, Running
from llmreel.cli.workers import Supervisor
from tests.fakeupstream import FakeUpstream

# Tests must set their own trust settings: these machines export system-bundle variables.
for _name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "HTTPS_PROXY", "HTTP_PROXY",
              "https_proxy", "http_proxy", "ALL_PROXY", "all_proxy"):  # fmt: skip
    os.environ.pop(_name, None)
os.environ["NO_PROXY"] = os.environ["no_proxy"] = ""


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(tls=True) as up:
        yield up


@pytest.fixture
def fake(upstream: FakeUpstream) -> FakeUpstream:
    """The session's fake upstream, with its request log cleared."""
    upstream.reset()
    return upstream


@pytest.fixture(scope="session")
def confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mitmproxy CA for the whole session (generating a key takes a while)."""
    path = tmp_path_factory.mktemp("confdir")
    write_bundle(str(path))
    return path


class ProxyThread:
    """A real llmreel proxy (mitmproxy + the addon) on its own event loop in a thread."""

    def __init__(self, settings: ProxySettings, workers: int = 1) -> None:
        self.settings = settings
        self.workers = workers
        self.server: Any = None
        self.running: Running | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="llmreel-proxy", daemon=True)

    def start(self) -> ProxyThread:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("proxy did not start in 30 s")
        if self._error is not None:
            raise self._error
        return self

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.server = (
            Supervisor(self.settings, self.workers)
            if self.workers > 1
            else ProxyServer(self.settings)
        )
        try:
            self.running = await self.server.start()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self.server.wait()
        await self.server.stop()
        if self.workers > 1:
            self.server.close_store()

    def stop(self) -> None:
        if self.server is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.server.shutdown)
        self._thread.join(30)
        assert not self._thread.is_alive(), "proxy thread did not stop"

    @property
    def url(self) -> str:
        assert self.running is not None
        return self.running.proxy_url

    @property
    def recorder(self) -> Any:
        assert isinstance(self.server, ProxyServer), "a proxy with --workers has no recorder here"
        return self.server.recorder

    @property
    def registry(self) -> Any:
        """The metrics as /metrics serves them: with workers, summed over the processes."""
        return self.server.registry if self.workers > 1 else self.recorder.registry

    def reverse_url(self, index: int = 0) -> str:
        assert self.running is not None
        return [li.url for li in self.running.listeners if li.kind == "reverse"][index]


@pytest.fixture
def proxy_workers() -> int:
    """Worker processes of the proxies `make_proxy` starts; a module overrides it to run its
    tests against `--workers 2` as well."""
    return 1


@pytest.fixture
def make_proxy(
    tmp_path: Path, confdir: Path, upstream: FakeUpstream, proxy_workers: int
) -> Iterator[Callable[..., ProxyThread]]:
    """Start proxies on free ports; each is stopped at the end of the test."""
    started: list[ProxyThread] = []

    def make(**overrides: Any) -> ProxyThread:
        settings = ProxySettings(
            port=0,
            metrics_port=0,
            store=str(tmp_path / "store"),
            confdir=str(confdir),
            sets=[f"ssl_verify_upstream_trusted_ca={upstream.cert_path}"],
        )
        workers = overrides.pop("workers", proxy_workers)
        proxy = ProxyThread(replace(settings, **overrides), workers).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


@pytest.fixture
def bundle(confdir: Path) -> str:
    return str(confdir / "llmreel-ca-bundle.pem")


def http_client(proxy: ProxyThread, bundle: str, **kw: Any) -> httpx.Client:
    """An httpx client that goes through the proxy and trusts its CA."""
    return httpx.Client(
        proxy=proxy.url, verify=ssl.create_default_context(cafile=bundle), timeout=30, **kw
    )


def wait_until[T](check: Callable[[], T], what: str, timeout: float = 30) -> T:
    """Poll `check` until it returns something truthy, and return that; fail after `timeout`
    seconds (a deadline for a hang, not a speed requirement) saying `what` never happened."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)
    return result


def need_binary(name: str, package: str = "prometheus") -> str:
    """The path of an external tool. Without it a test is skipped on a developer's machine, but
    fails in CI, where a skip would hide a check that never ran (.ci/run installs `package`)."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/run installs Debian's {package} package")
        pytest.skip(f"{name} is not installed (apt-get install {package})")
    return path
