"""The plugin once turned on, for one pytest process: its proxy, the running test, the tally.

`pytest_plugin` registers an `LLMReelPlugin` when a mode is set; its methods are pytest hooks.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest

from llmreel.cli.server import StartupError
from llmreel.core.exchange import Exchange
from llmreel.core.ids import new_id
from llmreel.storage.lmdbstore import StoreError
from llmreel.storage.stores import open_store
from llmreel.testing.calls import LLMCalls
from llmreel.testing.naming import namespace_for
from llmreel.testing.session import TestProxy
from llmreel.testing.settings import proxy_settings
from llmreel.testing.tally import Tally

__all__ = ["LLMReelPlugin"]

_WORKER_KEY = "llmreel"


@dataclass(slots=True)
class _Current:
    nodeid: str
    namespace: str
    checked: int = 0
    """How many of the test's exchanges were already checked for offline misses."""


class LLMReelPlugin:
    """The plugin's state for one pytest process: its proxy, the running test, the tally."""

    def __init__(self, config: pytest.Config, mode: str, source: str, *, marker: str) -> None:
        self.config = config
        self.mode = mode
        self.source = source
        self.marker = marker
        self.proxy: TestProxy | None = None
        self.current: _Current | None = None
        self.tally = Tally()
        self.unused: list[tuple[str, str]] = []
        self.is_worker = hasattr(config, "workerinput")
        # An xdist controller runs no test: each worker starts its own proxy.
        self.is_controller = not self.is_worker and bool(getattr(config.option, "numprocesses", 0))
        self.session_namespace: str | None = config.getoption("llmreel_namespace")
        store = config.getoption("llmreel_store")
        budget = config.getoption("llmreel_budget_usd")
        self.settings = proxy_settings(
            config.rootpath,
            mode=mode,
            # One run id for every worker of the session (they inherit the environment).
            run_id=os.environ.get("LLMREEL_RUN_ID") or new_id(),
            **({"store": str(Path(store).resolve())} if store else {}),
            **({"budget_usd": budget} if budget else {}),
            control_port=0,  # the control API, on a free port: LLMREEL_CONTROL_URL
        )
        self._saved_run_id: str | None = None

    # --- the proxy ----------------------------------------------------------------------------

    def start(self) -> None:
        if self.is_controller:
            self._saved_run_id = os.environ.get("LLMREEL_RUN_ID")
            os.environ["LLMREEL_RUN_ID"] = self.settings.run_id
            return
        try:
            self.proxy = TestProxy(self.settings).start()
        except (StartupError, click.ClickException) as exc:
            raise pytest.UsageError(f"llmreel: {exc}") from exc

    def _stop(self) -> None:
        if self.proxy is None:
            return
        proxy, self.proxy = self.proxy, None
        self.tally.add_report(proxy.stop())

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self._stop()
        if self.is_controller:
            if self._saved_run_id is None:
                os.environ.pop("LLMREEL_RUN_ID", None)
            else:
                os.environ["LLMREEL_RUN_ID"] = self._saved_run_id

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        where = ""
        if self.is_controller:
            where = ", one proxy per xdist worker"
        elif self.proxy is not None and self.proxy.running is not None:
            where = f", proxy {self.proxy.running.proxy_url}"
        return [f"llmreel: mode {self.mode} ({self.source}), store {self.settings.store}{where}"]

    # --- one test -----------------------------------------------------------------------------

    def calls(self) -> LLMCalls | None:
        """The `llmreel` fixture's value for the running test; None outside a test."""
        if self.proxy is None or self.current is None:
            return None
        return LLMCalls(self.proxy.exchanges, self.current.namespace)

    def namespace_of(self, item: pytest.Item) -> str:
        if self.session_namespace:
            return self.session_namespace
        mark = item.get_closest_marker(self.marker)
        if mark is not None and mark.kwargs.get("namespace"):
            return str(mark.kwargs["namespace"])
        return namespace_for(item.nodeid)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, object, object]:
        if self.proxy is None:
            return (yield)
        namespace = self.namespace_of(item)
        try:
            self.proxy.begin(namespace)
        except ValueError as exc:
            raise pytest.UsageError(
                f"llmreel: namespace {namespace!r} of {item.nodeid}: {exc}"
            ) from exc
        self.current = _Current(item.nodeid, namespace)
        try:
            return (yield)
        finally:
            self.tally.add_test(item.nodeid, namespace, self.proxy.exchanges())
            self.current = None

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        current = self.current
        if self.proxy is None or current is None or current.nodeid != item.nodeid:
            return report
        exchanges = self.proxy.exchanges()
        new = exchanges[current.checked :]
        current.checked = len(exchanges)
        misses = [ex for ex in new if ex.cache == "offline_miss"]
        refused = sum(ex.cache == "budget_refused" for ex in new)
        if not misses and not refused:
            return report
        text = "\n\n".join(
            ([self._miss_text(item, misses)] if misses else [])
            + ([f"llmreel: {refused} LLM call(s) of this test were refused: the session's budget "
                f"(${self.settings.budget_usd}, --llmreel-budget-usd) is spent."] if refused else [])
        )  # fmt: skip
        # The application may have caught the error and carried on: the test fails anyway,
        # because what it checked was not what was recorded.
        addsection = getattr(report.longrepr, "addsection", None)
        if not report.failed:
            report.outcome = "failed"
            report.longrepr = text
        elif callable(addsection):  # a traceback: the miss shows right under it
            addsection("llmreel: offline miss", text)
        else:
            report.sections.append(("llmreel: offline miss", text))
        return report

    def _miss_text(self, item: pytest.Item, misses: list[Exchange]) -> str:
        lines = [
            f"llmreel: {len(misses)} LLM call(s) of this test had no recording, and llmreel is "
            f"in {self.mode} mode. The test fails even if the code under test handled the error."
        ]
        for ex in misses:
            lines += ["", f"{ex.method} {ex.url}  (namespace {ex.namespace!r}, key {ex.key})"]
            explanation = ex.explanation or "(no explanation)"
            lines += [f"  {line}" for line in explanation.splitlines()]
        lines += ["", "To record it (with network access and API keys), run:",
                  f"  {self.record_command(item.nodeid)}"]  # fmt: skip
        return "\n".join(lines)

    def record_command(self, nodeid: str) -> str:
        words = ["pytest", "--llmreel=auto"]
        for option, name in (("--llmreel-store", "llmreel_store"),
                             ("--llmreel-namespace", "llmreel_namespace")):  # fmt: skip
            value = self.config.getoption(name)
            if value:
                words.append(f"{option}={value}")
        return shlex.join([*words, nodeid])

    # --- the end ------------------------------------------------------------------------------

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """An xdist worker finished: add its tally to the session's."""
        data = getattr(node, "workeroutput", {}).get(_WORKER_KEY)
        if data is not None:
            self.tally.merge(Tally.from_json(data))

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self._stop()
        if self.is_worker:
            self.config.workeroutput[_WORKER_KEY] = self.tally.to_json()  # type: ignore[attr-defined]
            return
        self.unused = self._find_unused()
        if self.unused and self.config.getoption("llmreel_fail_on_unused"):
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _find_unused(self) -> list[tuple[str, str]]:
        """Recordings in the namespaces of the tests that ran that none of them replayed.
        Read after the proxies stopped: one process must not open an LMDB store twice."""
        if not self.tally.namespaces or self.mode == "passthrough":
            return []
        try:
            store = open_store(self.settings.store, create=False)
        except StoreError:
            return []  # no store yet: nothing recorded, nothing unused
        try:
            recorded = [(r.namespace, r.key, r.seq)
                        for ns in sorted(self.tally.namespaces) for r in store.iter(ns)]  # fmt: skip
        finally:
            store.close()
        return self.tally.unused(recorded)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.is_worker:
            return
        tr = terminalreporter
        tr.write_sep("=", f"llmreel ({self.mode}, store {self.settings.store})")
        for line in self.tally.render():
            tr.write_line(line)
        if self.settings.budget_usd:
            tr.write_line(f"budget ${self.settings.budget_usd} (--llmreel-budget-usd): calls past "
                          "it were refused with a 402 and show as errors in their tests")  # fmt: skip
        if not self.unused:
            return
        listed = (
            self.config.getoption("llmreel_fail_on_unused") or self.config.getoption("verbose") > 0
        )
        hint = "" if listed else "; --llmreel-fail-on-unused or -v lists them"
        tr.write_line(
            f"{len(self.unused)} recording(s) in the tests' namespaces were not replayed{hint}"
        )
        if listed:
            for namespace, key in self.unused:
                tr.write_line(f"  unused {key} namespace={namespace}")
