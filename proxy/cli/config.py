"""Settings a team shares: `llmreel.toml`, or `[tool.llmreel]` in `pyproject.toml`.

Every command-line option can be set there, under its option name (`ignore-field` or
`ignore_field`). Top-level keys apply to every command that has that option; a table named
after a command (`[run]`, `[serve]`, `[cache]`, `[cache.export]`) overrides them for it:

    mode = "offline"
    store = "tests/recordings"          # relative paths are relative to this file
    ignore-field = ["user", "metadata.run_id"]

    [serve]
    reverse = ["https://api.openai.com@8081"]

Precedence, strongest first: the command line, then environment variables (`LLMREEL_MODE`...),
then this file, then built-in defaults. That is click's `default_map` order; environment beats
the file so that CI can override a committed setting (`LLMREEL_MODE=auto`) without editing it.
"""

from __future__ import annotations

import enum
import json
import os
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

__all__ = [
    "CONFIG_ENV",
    "CONFIG_FILE",
    "PLUGIN_MODE_SETTING",
    "ConfigError",
    "Settings",
    "apply_config",
    "build_default_map",
    "config_command",
    "find_config",
    "load_config",
]

CONFIG_FILE = "llmreel.toml"
#: Names a config file explicitly, skipping the search (`LLMREEL_CONFIG=ci/llmreel.toml`).
CONFIG_ENV = "LLMREEL_CONFIG"
# Options whose relative values name files or directories: relative to the config file, so
# that `llmreel run` from a subdirectory still finds the project's recordings.
_PATH_OPTIONS = frozenset({"store", "prices", "confdir"})
#: A top-level key read by the pytest plugin only (`llmreel = "offline"` turns it on); commands
#: ignore it.
PLUGIN_MODE_SETTING = "llmreel"


class ConfigError(click.ClickException):
    """A configuration file that cannot be used; the message names the file and the fix."""


# --------------------------------------------------------------------------------------------
# Finding and reading the file


def find_config(start: Path) -> Path | None:
    """The nearest `llmreel.toml`, or `pyproject.toml` with `[tool.llmreel]`, from `start` up.

    The search stops at the git root (a directory holding `.git`) or the filesystem root.
    """
    directory = start.resolve()
    while True:
        own = directory / CONFIG_FILE
        pyproject = directory / "pyproject.toml"
        has_tool = pyproject.is_file() and _tool_table(pyproject) is not None
        if own.is_file():
            if has_tool:
                raise ConfigError(
                    f"both {own} and [tool.llmreel] in {pyproject} hold llmreel settings; "
                    "keep them in one place"
                )
            return own
        if has_tool:
            return pyproject
        if (directory / ".git").exists() or directory.parent == directory:
            return None
        directory = directory.parent


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def _tool_table(pyproject: Path) -> dict[str, Any] | None:
    table = _read_toml(pyproject).get("tool", {}).get("llmreel")
    if table is not None and not isinstance(table, dict):
        raise ConfigError(f"{pyproject}: tool.llmreel must be a table ([tool.llmreel])")
    return table


def load_config(start: Path) -> tuple[dict[str, Any], Path | None]:
    """The settings table found from `start` upwards (see `find_config`), and its file.

    `LLMREEL_CONFIG`, when set, names the file instead. No file: `({}, None)`.
    """
    explicit = os.environ.get(CONFIG_ENV)
    path = Path(explicit) if explicit else find_config(start)
    if path is None:
        return {}, None
    if not path.is_file():
        raise ConfigError(f"{CONFIG_ENV}={explicit} names no file; fix or unset it")
    if path.name == "pyproject.toml":
        table = _tool_table(path)
        if table is None:
            raise ConfigError(f"{path} has no [tool.llmreel] table")
        return table, path
    return _read_toml(path), path


# --------------------------------------------------------------------------------------------
# Turning it into click defaults


@dataclass(frozen=True, slots=True)
class Settings:
    """A click `default_map`, and for each value the place in the file it came from."""

    default_map: dict[str, Any]
    origins: dict[str, Any]


def build_default_map(config: dict[str, Any], group: click.Command, source: Path) -> Settings:
    """The click `default_map` for `group` (e.g. `{"run": {"mode": "offline"}, ...}`).

    Raises `ConfigError` for a key that is no option of any command it could apply to.
    """
    table_prefix = "tool.llmreel" if source.name == "pyproject.toml" else ""
    _validate(config, group, source, table_prefix)
    root_label = f"{source.name} [{table_prefix}]" if table_prefix else source.name
    values: dict[str, Any] = {}
    origins: dict[str, Any] = {}
    _build(group, [(root_label, config)], config, source, table_prefix, values, origins)
    return Settings(values, origins)


def _options(command: click.Command) -> dict[str, click.Option]:
    """Every name a setting may use for an option of `command`, normalised to underscores."""
    names: dict[str, click.Option] = {}
    for param in command.params:
        if not isinstance(param, click.Option) or param.name in (None, "help", "version"):
            continue
        if param.hidden:
            continue
        names[param.name] = param
        for opt in (*param.opts, *param.secondary_opts):
            if opt.startswith("--"):
                names[opt[2:].replace("-", "_")] = param
    return names


def _subcommands(command: click.Command) -> dict[str, click.Command]:
    return dict(command.commands) if isinstance(command, click.Group) else {}


def _tree_options(command: click.Command) -> dict[str, click.Option]:
    names = dict(_options(command))
    for sub in _subcommands(command).values():
        names.update(_tree_options(sub))
    return names


def _validate(
    table: dict[str, Any], command: click.Command, source: Path, where: str, *, top: bool = True
) -> None:
    subs = _subcommands(command)
    known = _tree_options(command)
    for key, value in table.items():
        if isinstance(value, dict):
            if key in subs:
                _validate(value, subs[key], source, f"{where}.{key}" if where else key, top=False)
                continue
            problem = f"[{where + '.' if where else ''}{key}] is not a command's table"
        elif key.replace("-", "_") in known or (top and key == PLUGIN_MODE_SETTING):
            continue
        else:
            problem = f"unknown setting {key!r}" + (f" in [{where}]" if where else "")
        valid = sorted({_display_name(p) for p in known.values()})
        tables = sorted(subs)
        raise ConfigError(
            f"{source}: {problem}. Valid settings here: {', '.join(valid)}"
            + (f"; command tables: {', '.join(f'[{t}]' for t in tables)}" if tables else "")
        )


def _display_name(param: click.Option) -> str:
    longs = [o[2:] for o in param.opts if o.startswith("--")]
    return longs[0] if longs else str(param.name)


def _build(
    command: click.Command,
    scopes: list[tuple[str, dict[str, Any]]],
    own: dict[str, Any] | None,
    source: Path,
    where: str,
    values: dict[str, Any],
    origins: dict[str, Any],
) -> None:
    options = _options(command)
    for key_scope_label, table in scopes:
        for key, value in table.items():
            if isinstance(value, dict):
                continue
            param = options.get(key.replace("-", "_"))
            if param is None or param.name is None:
                continue  # a shared key for some other command
            values[param.name] = _normalise(param, value, source)
            origins[param.name] = key_scope_label
    for name, sub in _subcommands(command).items():
        inner = own.get(name) if own is not None else None
        sub_where = f"{where}.{name}" if where else name
        sub_scopes = scopes
        if isinstance(inner, dict):
            sub_scopes = [*scopes, (f"{source.name} [{sub_where}]", inner)]
        else:
            inner = None
        sub_values: dict[str, Any] = {}
        sub_origins: dict[str, Any] = {}
        _build(sub, sub_scopes, inner, source, sub_where, sub_values, sub_origins)
        if sub_values:
            values[name] = sub_values
            origins[name] = sub_origins


def _normalise(param: click.Option, value: Any, source: Path) -> Any:
    if param.multiple and not isinstance(value, list):
        value = [value]
    if param.name in _PATH_OPTIONS:
        if isinstance(value, list):
            return [_resolve(v, source) for v in value]
        return _resolve(value, source)
    return value


def _resolve(value: Any, source: Path) -> Any:
    if not isinstance(value, str) or not value or value.startswith("~") or os.path.isabs(value):
        return value
    return str((source.parent / value).resolve())


def apply_config(ctx: click.Context, start: Path | None = None) -> Path | None:
    """Load the config file and make it `ctx`'s `default_map`; returns the file used, if any.

    Call it from the root group's callback: subcommand contexts, created afterwards, inherit
    their part of the map. A `default_map` already on `ctx` (tests) wins over the file.
    """
    config, path = load_config(start or Path.cwd())
    if path is None:
        return None
    settings = build_default_map(config, ctx.command, path)
    ctx.default_map = _merge(settings.default_map, ctx.default_map or {})
    ctx.meta["llmreel.config"] = (path, settings)
    return path


def _merge(base: dict[str, Any], over: Any) -> dict[str, Any]:
    out = dict(base)
    for key, value in dict(over).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------------------------
# `llmreel config`


@dataclass(frozen=True, slots=True)
class Resolved:
    name: str
    value: Any
    source: str


def resolve_settings(
    command: click.Command, values: dict[str, Any], origins: dict[str, Any]
) -> Iterator[Resolved]:
    """What each option of `command` resolves to without command-line arguments, and why."""
    for param in command.params:
        if not isinstance(param, click.Option) or param.name in (None, "help") or param.hidden:
            continue
        envvars = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or [])
        env_hit = next((e for e in envvars if os.environ.get(e)), None)
        if env_hit is not None:
            yield Resolved(_display_name(param), os.environ[env_hit], f"env {env_hit}")
        elif param.name in values:
            yield Resolved(_display_name(param), values[param.name], origins[param.name])
        else:
            # get_default, not .default: click keeps a sentinel there for flags and lists.
            default = param.get_default(click.Context(command), call=True)
            if param.multiple:
                default = list(default) if isinstance(default, (list, tuple)) else []
            elif isinstance(default, enum.Enum):  # click's "no default" sentinel
                default = None
            yield Resolved(_display_name(param), default, "default")


def _toml_value(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        items = [_toml_value(v) for v in value]
        return "[" + ", ".join(i for i in items if i is not None) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


@click.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of annotated TOML.")
@click.pass_context
def config_command(ctx: click.Context, as_json: bool) -> None:
    """Show the settings `serve` and `run` would use, and where each one comes from.

    Sources, strongest first: the command line (not shown), environment variables, the config
    file (llmreel.toml or [tool.llmreel] in pyproject.toml, found from the current directory
    up to the git root), then built-in defaults.
    """
    root = ctx.find_root().command
    config, path = load_config(Path.cwd())
    settings = build_default_map(config, root, path) if path is not None else Settings({}, {})
    commands = {n: c for n, c in _subcommands(root).items() if n in ("serve", "run")}
    report: dict[str, Any] = {"file": str(path) if path else None}
    for name, command in commands.items():
        report[name] = list(
            resolve_settings(
                command, settings.default_map.get(name, {}), settings.origins.get(name, {})
            )
        )
    if as_json:
        out = {"file": report["file"]}
        for name in commands:
            out[name] = {r.name: {"value": r.value, "source": r.source} for r in report[name]}
        click.echo(json.dumps(out, indent=2, default=str))
        return
    click.echo(f"# config file: {path}" if path else "# no config file (llmreel.toml or "
               "[tool.llmreel] in pyproject.toml) between here and the git root")  # fmt: skip
    for name in commands:
        click.echo(f"\n[{name}]")
        lines = []
        for r in report[name]:
            shown = _toml_value(r.value)
            left = f"# {r.name} is not set" if shown is None else f"{r.name} = {shown}"
            lines.append((left, r.source))
        width = min(max((len(left) for left, _ in lines), default=0), 60)
        for left, source in lines:
            click.echo(f"{left.ljust(width)}  # {source}")
