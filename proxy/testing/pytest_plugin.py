"""The pytest plugin: each test's LLM calls recorded and replayed through llmreel, like cassettes.

    pytest --llmreel=offline               # replay only; a call without a recording fails its test
    pytest --llmreel=auto                  # replay what is recorded, record what is new

Off unless a mode is given (see `llmreel.testing.settings`). Then one proxy runs per pytest
process (per xdist worker), started before test modules are imported, and the environment points
the process and its children at it, as `llmreel run` does. Each test's calls go to a namespace
named after its node id; `@pytest.mark.llmreel(namespace="shared")` or `--llmreel-namespace NAME`
share one. The `llmreel` fixture shows a test its calls. See docs/ci.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
import pytest

from llmreel.core.modes import MODES
from llmreel.testing.settings import SettingsError, plugin_mode

if TYPE_CHECKING:
    from llmreel.testing.calls import LLMCalls

__all__ = ["llmreel"]

#: The name the session's plugin object is registered under.
PLUGIN_NAME = "llmreel-session"
MARKER = "llmreel"

# Every pytest run in an environment with llmreel installed imports this module: it stays light,
# and mitmproxy, lmdb and the rest are imported only once the plugin is turned on.


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmreel", "llmreel: record and replay LLM calls per test")
    group.addoption(
        "--llmreel", dest="llmreel_mode", choices=MODES, default=None, metavar="MODE",
        help="Run the tests' LLM calls through llmreel: auto (replay, record what is new), "
        "record (call upstream and overwrite), offline (replay only; a miss fails its test) or "
        "passthrough (no cache; log and meter). Default: the llmreel ini option, or llmreel = "
        "MODE in llmreel.toml / [tool.llmreel]; off otherwise.",
    )  # fmt: skip
    group.addoption(
        "--llmreel-store", dest="llmreel_store", default=None, metavar="PATH",
        help="The recordings (an LMDB store or an export directory). Default: store in "
        "llmreel.toml / [tool.llmreel], else .llmreel.",
    )  # fmt: skip
    group.addoption(
        "--llmreel-namespace", dest="llmreel_namespace", default=None, metavar="NAME",
        help="One namespace for every test's calls, instead of one per test.",
    )  # fmt: skip
    group.addoption(
        "--llmreel-budget-usd", dest="llmreel_budget_usd", default=None, metavar="USD",
        help="Refuse upstream calls once the session spent this many dollars (cache hits keep "
        "working); a refused call fails its test. Default: budget-usd in llmreel.toml, if any.",
    )  # fmt: skip
    group.addoption(
        "--llmreel-fail-on-unused", dest="llmreel_fail_on_unused", action="store_true",
        help="Fail the session if recordings in the namespaces of the tests that ran were not "
        "replayed, and list them.",
    )  # fmt: skip
    parser.addini("llmreel", "llmreel mode for every run (auto, record, offline, passthrough); "
                  "--llmreel overrides it.", default="")  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(namespace=NAME): record and replay this test's LLM calls in namespace NAME "
        "(tests with the same NAME share recordings).",
    )
    try:
        mode, source = plugin_mode(
            config.getoption("llmreel_mode"), str(config.getini("llmreel")), config.rootpath
        )
    except (SettingsError, click.ClickException) as exc:
        raise pytest.UsageError(f"llmreel: {exc}") from exc
    if mode is None:
        return
    from llmreel.testing.runner import LLMReelPlugin

    try:
        plugin = LLMReelPlugin(config, mode, source, marker=MARKER)
    except click.ClickException as exc:  # a bad llmreel.toml
        raise pytest.UsageError(f"llmreel: {exc}") from exc
    config.pluginmanager.register(plugin, PLUGIN_NAME)
    plugin.start()


@pytest.fixture
def llmreel(request: pytest.FixtureRequest) -> LLMCalls:
    """The LLM calls of the current test: `llmreel.calls`, `.exchanges`, `.cost_usd`, ..."""
    plugin = request.config.pluginmanager.get_plugin(PLUGIN_NAME)
    calls: LLMCalls | None = plugin.calls() if plugin is not None else None
    if calls is None:
        pytest.fail(
            "the llmreel fixture needs the llmreel plugin on: run pytest with "
            '--llmreel=auto (or offline), or set llmreel = "offline" in the pytest ini options',
            pytrace=False,
        )
    return calls
