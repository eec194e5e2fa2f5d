"""The plugin's settings: whether it is on, and the proxy settings `llmreel run` would use.

The plugin is on when a mode is given: `--llmreel MODE`, else `llmreel = "MODE"` in the pytest
ini section (`[tool.pytest.ini_options]`, pytest.ini), else `llmreel = "MODE"` in llmreel.toml
or `[tool.llmreel]`. The proxy's other settings (store, ignore-field, provider-host, ...) come
from that same file and the `LLMREEL_*` variables, resolved by the `run` command's own options,
so a suite and `llmreel run` always agree.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmreel.cli.config import PLUGIN_MODE_SETTING, build_default_map, load_config
from llmreel.core.modes import MODES

if TYPE_CHECKING:
    from llmreel.cli.server import ProxySettings

__all__ = ["SettingsError", "plugin_mode", "proxy_settings"]


class SettingsError(Exception):
    """A setting the plugin cannot use; the message says which and what to write instead."""


def plugin_mode(flag: str | None, ini: str | None, start: Path) -> tuple[str | None, str]:
    """The mode the plugin runs in (None: off), and where it was set."""
    if flag:
        return _valid(flag, "--llmreel"), "--llmreel"
    if ini:
        return _valid(ini.strip(), "the llmreel ini option"), "ini option llmreel"
    table, path = load_config(start)
    value = table.get(PLUGIN_MODE_SETTING)
    if value is None or path is None:
        return None, ""
    where = f"{PLUGIN_MODE_SETTING} in {path}"
    if not isinstance(value, str):
        raise SettingsError(f"{where} must be a string, one of {', '.join(MODES)}")
    return _valid(value, where), where


def _valid(mode: str, where: str) -> str:
    if mode not in MODES:
        raise SettingsError(f"{where}: {mode!r} is not a mode; use one of {', '.join(MODES)}")
    return mode


def proxy_settings(start: Path, **overrides: Any) -> ProxySettings:
    """What `llmreel run` would use when started in `start`, with `overrides` applied.

    The listeners pick free ports (one proxy per xdist worker), and metrics are off.
    """
    # Imported here: `plugin_mode` runs in every pytest session, this only when the plugin is on.
    from llmreel.cli.main import main as cli_group
    from llmreel.cli.main import run
    from llmreel.cli.server import ProxySettings

    config, path = load_config(start)
    default_map: dict[str, Any] = {}
    if path is not None:
        default_map = build_default_map(config, cli_group, path).default_map.get("run", {})
    # Let click resolve the `run` command's options as it would for `llmreel run -- true`:
    # the file, then LLMREEL_* variables, then the built-in defaults.
    with run.make_context("run", ["true"], default_map=default_map) as ctx:
        params = dict(ctx.params)
    fields = {f.name for f in dataclasses.fields(ProxySettings)}
    values = {name: value for name, value in params.items() if name in fields}
    values.update(port=0, metrics_port=0)
    values.update(overrides)
    return ProxySettings(**values)
