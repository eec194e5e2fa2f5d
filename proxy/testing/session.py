"""One llmreel proxy for a test process, on its own event loop in a background thread.

The pytest plugin starts it before collection and stops it at the end of the session. Tests
run in the main thread; everything that touches the engine runs on the proxy's loop, and the
exchanges it finishes reach the test thread through a lock.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from llmreel.cli.clientenv import base_url_env, client_env, write_bundle
from llmreel.cli.server import ProxyServer, ProxySettings, Running, StartupError
from llmreel.core.exchange import Exchange
from llmreel.metering.report import RunReport
from llmreel.providers import DEFAULT_HOSTS, parse_host_mappings
from llmreel.storage.lmdbstore import validate_namespace

__all__ = ["InFlight", "TestProxy"]

T = TypeVar("T")
#: How long to wait for the proxy to start or stop, and for a call on its loop: a hang guard.
LOOP_TIMEOUT_S = 60.0
#: How long `settle` waits for calls still in flight when a test asks about its calls or ends.
SETTLE_TIMEOUT_S = 10.0
_FLOW_MARK = "llmreel.testing.inflight"


class InFlight:
    """A mitmproxy addon counting flows between their request headers and their end.

    Added after the recorder, so its `response` and `error` hooks run once the recorder has
    accounted for the flow: a count of zero means every exchange has reached the sinks.
    """

    def __init__(self) -> None:
        self.count = 0

    def requestheaders(self, flow: Any) -> None:
        flow.metadata[_FLOW_MARK] = True
        self.count += 1

    def response(self, flow: Any) -> None:
        self._done(flow)

    def error(self, flow: Any) -> None:
        self._done(flow)

    def _done(self, flow: Any) -> None:
        if flow.metadata.pop(_FLOW_MARK, False):
            self.count -= 1


class TestProxy:
    """A started proxy whose default namespace follows the running test.

    proxy = TestProxy(settings).start()     # sets HTTPS_PROXY & co. in os.environ
    proxy.begin("tests.test_agent.test_weather")
    ...                                     # the test runs
    exchanges = proxy.exchanges()           # the calls since `begin`
    report = proxy.stop()                   # restores the environment
    """

    __test__ = False  # not a test class, whatever pytest's name patterns say

    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        self.running: Running | None = None
        self.environment: dict[str, str] = {}
        self._server: ProxyServer | None = None
        self._inflight = InFlight()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="llmreel-proxy", daemon=True)
        self._lock = threading.Lock()
        self._current: list[Exchange] = []
        self._saved_env: dict[str, str | None] = {}

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> TestProxy:
        """Start the proxy and point this process (and its children) at it."""
        bundle = write_bundle(self.settings.confdir)
        self._thread.start()
        if not self._ready.wait(LOOP_TIMEOUT_S):
            raise StartupError(f"the llmreel proxy did not start within {LOOP_TIMEOUT_S:.0f} s")
        if self._error is not None:
            raise self._error
        assert self.running is not None
        reverse = [li for li in self.running.listeners if li.kind == "reverse"]
        hosts = DEFAULT_HOSTS.merged(parse_host_mappings(self.settings.hosts))
        base_urls, _ = base_url_env(
            [(r, li.url) for r, li in zip(self.settings.reverse, reverse, strict=False)], hosts
        )
        self.environment = client_env(self.running.proxy_url, bundle, base_urls)
        self.environment["LLMREEL_RUN_ID"] = self.settings.run_id
        if self.running.control_url:  # for agents in other languages the tests start
            self.environment["LLMREEL_CONTROL_URL"] = self.running.control_url
        for name, value in self.environment.items():
            self._saved_env[name] = os.environ.get(name)
            os.environ[name] = value
        return self

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        server = self._server = ProxyServer(self.settings)
        server.recorder.report.detailed = True  # for the unused recordings
        server.recorder.report.run_id = self.settings.run_id
        server.recorder.sinks.append(self._collect)
        try:
            self.running = await server.start()
            if server.recorder.metrics_error:
                raise StartupError(f"{server.recorder.metrics_error}; pick another metrics port")
            assert server.master is not None
            server.master.addons.add(self._inflight)  # type: ignore[no-untyped-call]
        except BaseException as exc:  # noqa: BLE001 - handed to the thread that called start()
            self._error = exc
            self._ready.set()
            await server.stop()
            return
        self._ready.set()
        await server.wait()
        await server.stop()

    def stop(self) -> RunReport:
        """Stop the proxy (closing its store) and restore the environment; the run's report."""
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env.clear()
        server, loop = self._server, self._loop
        if server is not None and loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(server.shutdown)
            except RuntimeError:  # the loop closed in the meantime
                pass
        self._thread.join(LOOP_TIMEOUT_S)
        if self._thread.is_alive():
            raise RuntimeError(f"the llmreel proxy did not stop within {LOOP_TIMEOUT_S:.0f} s")
        return server.recorder.report if server is not None else RunReport()

    # --- per test -----------------------------------------------------------------------------

    def begin(self, namespace: str) -> None:
        """Calls from now on go to `namespace` (unless they carry an llmreel-namespace header),
        and sequence mode counts their occurrences from the first again."""
        validate_namespace(namespace)
        self.settle()

        def switch() -> None:
            engine = self._engine()
            engine.default_namespace = namespace
            engine.new_run()

        self._on_loop(switch)
        with self._lock:
            self._current = []

    def exchanges(self) -> list[Exchange]:
        """The exchanges finished since `begin`, after waiting for those still in flight."""
        self.settle()
        with self._lock:
            return list(self._current)

    def settle(self, timeout: float = SETTLE_TIMEOUT_S) -> bool:
        """Wait until no call is in flight (polled; a hang guard, not a speed requirement).
        False if some were still running at the deadline (a test that left a thread calling)."""
        deadline = time.monotonic() + timeout
        while self._on_loop(lambda: self._inflight.count) > 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def _collect(self, exchange: Exchange) -> None:  # on the proxy's loop
        with self._lock:
            self._current.append(exchange)

    def _engine(self) -> Any:
        assert self._server is not None
        return self._server.recorder.engine

    def _on_loop(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the proxy's loop and return its result."""
        assert self._loop is not None
        future: Future[T] = Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return future.result(LOOP_TIMEOUT_S)
