"""Shared settings: finding llmreel.toml / [tool.llmreel], default_map building, precedence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from llmreel.cli import main as cli
from llmreel.cli.cache import cache
from llmreel.cli.config import (
    ConfigError,
    apply_config,
    build_default_map,
    config_command,
    find_config,
    load_config,
)


@click.group()
@click.pass_context
def root(ctx: click.Context) -> None:
    """Like `llmreel`'s main group, with the config hookup the lead adds there."""
    apply_config(ctx)


@root.command()
@cli.proxy_options(default_port=0, default_metrics_port=0)
def probe(**kw: Any) -> None:
    """Prints what `run` would get."""
    click.echo(json.dumps({k: kw[k] for k in ("mode", "store", "ignore_fields", "port")}))


root.add_command(cli.serve)
root.add_command(cli.run)
root.add_command(cache)
root.add_command(config_command)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / ".git").mkdir()
    monkeypatch.chdir(tmp_path)
    for name in ("LLMREEL_CONFIG", "LLMREEL_MODE", "LLMREEL_STORE", "LLMREEL_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(root, list(args), env=env, catch_exceptions=False)


def test_search_goes_up_to_the_git_root(project: Path) -> None:
    sub = project / "a" / "b"
    sub.mkdir(parents=True)
    assert find_config(sub) is None
    (project / "llmreel.toml").write_text('mode = "offline"\n')
    assert find_config(sub) == project / "llmreel.toml"
    (project.parent / "llmreel.toml").write_text("")  # beyond the git root: never read
    (project / "llmreel.toml").unlink()
    assert find_config(sub) is None
    (project.parent / "llmreel.toml").unlink()


def test_pyproject_tool_table(project: Path) -> None:
    (project / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert load_config(project) == ({}, None)
    (project / "pyproject.toml").write_text(
        '[tool.llmreel]\nmode = "offline"\n[tool.llmreel.run]\nport = 9\n'
    )
    config, path = load_config(project)
    assert path == project / "pyproject.toml" and config == {"mode": "offline", "run": {"port": 9}}
    (project / "llmreel.toml").write_text("")
    with pytest.raises(ConfigError, match="keep them in one place"):
        load_config(project)


def test_default_map_shares_keys_and_tables_override(project: Path) -> None:
    file = project / "llmreel.toml"
    config = {
        "mode": "offline",
        "store": "tests/recordings",
        "ignore-field": "user",
        "run": {"mode": "auto"},
        "cache": {"audit": {"allow": ["abcd1234"]}},
    }
    settings = build_default_map(config, root, file)
    dm = settings.default_map
    assert dm["serve"]["mode"] == "offline" and dm["run"]["mode"] == "auto"
    assert dm["run"]["ignore_fields"] == ["user"], "a scalar for a repeatable option is a list"
    recordings = str(project / "tests" / "recordings")
    assert dm["serve"]["store"] == dm["cache"]["ls"]["store"] == recordings
    assert dm["cache"]["audit"]["allow"] == ["abcd1234"]
    assert "mode" not in dm["cache"]["ls"]
    assert settings.origins["run"]["mode"] == "llmreel.toml [run]"
    assert settings.origins["serve"]["mode"] == "llmreel.toml"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"moed": "offline"}, "unknown setting 'moed'.*Valid settings here: .*mode"),
        ({"run": {"allow": ["x"]}}, r"unknown setting 'allow' in \[run\]"),
        ({"nope": {"mode": "x"}}, r"\[nope\] is not a command's table.*\[run\]"),
        ({"run": {"llmreel": "offline"}}, r"unknown setting 'llmreel' in \[run\]"),
    ],
)
def test_unknown_keys_name_the_file_and_the_valid_ones(
    project: Path, config: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        build_default_map(config, root, project / "llmreel.toml")
    assert str(project / "llmreel.toml") in info.value.message


def test_the_pytest_plugins_mode_is_a_top_level_key_commands_ignore(project: Path) -> None:
    settings = build_default_map({"llmreel": "offline"}, root, project / "llmreel.toml")
    assert "llmreel" not in settings.default_map.get("run", {})


def test_precedence_cli_over_env_over_file_over_default(project: Path) -> None:
    out = json.loads(invoke("probe").output)
    assert out["mode"] == "auto" and out["store"] == ".llmreel"
    (project / "llmreel.toml").write_text(
        'mode = "offline"\nstore = "rec"\nignore_field = ["user", "metadata.run_id"]\n'
        "[probe]\nport = 1234\n"
    )
    out = json.loads(invoke("probe").output)
    assert out == {
        "mode": "offline",
        "store": str(project / "rec"),
        "ignore_fields": ["user", "metadata.run_id"],
        "port": 1234,
    }
    out = json.loads(invoke("probe", env={"LLMREEL_MODE": "record"}).output)
    assert out["mode"] == "record"
    out = json.loads(invoke("probe", "--mode", "passthrough", "--ignore-field", "x",
                            env={"LLMREEL_MODE": "record"}).output)  # fmt: skip
    assert out["mode"] == "passthrough" and out["ignore_fields"] == ["x"]


def test_broken_file_is_a_clear_error(project: Path) -> None:
    (project / "llmreel.toml").write_text("mode = \n")
    result = CliRunner().invoke(root, ["probe"])
    assert result.exit_code == 1 and "llmreel.toml is not valid TOML" in result.output
    (project / "llmreel.toml").write_text('mdoe = "offline"\n')
    result = CliRunner().invoke(root, ["probe"])
    assert result.exit_code == 1 and "unknown setting 'mdoe'" in result.output


def test_explicit_config_file(project: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    elsewhere = tmp_path_factory.mktemp("ci") / "ci.toml"
    elsewhere.write_text('mode = "offline"\n')
    out = json.loads(invoke("probe", env={"LLMREEL_CONFIG": str(elsewhere)}).output)
    assert out["mode"] == "offline"
    result = CliRunner().invoke(root, ["probe"], env={"LLMREEL_CONFIG": str(elsewhere) + ".x"})
    assert "names no file" in result.output


def test_config_command_shows_values_and_sources(project: Path) -> None:
    (project / "llmreel.toml").write_text(
        'mode = "offline"\nreverse = ["https://api.openai.com@8081"]\n[run]\nnamespace = "ci"\n'
    )
    text = invoke("config", env={"LLMREEL_STORE": "/tmp/elsewhere"}).output
    assert f"# config file: {project / 'llmreel.toml'}" in text
    serve = text.split("\n[serve]\n")[1].split("\n[run]\n")[0]
    run = text.split("\n[run]\n")[1]
    assert 'mode = "offline"' in serve and "# llmreel.toml" in serve
    assert 'store = "/tmp/elsewhere"' in serve and "# env LLMREEL_STORE" in serve
    assert 'reverse = ["https://api.openai.com@8081"]' in serve
    assert 'namespace = "ci"' in run and "llmreel.toml [run]" in run
    assert 'namespace = "default"' in serve and "# default" in serve
    assert "# prices is not set" in serve
    data = json.loads(invoke("config", "--json").output)
    assert data["run"]["namespace"] == {"value": "ci", "source": "llmreel.toml [run]"}
    assert data["serve"]["port"] == {"value": 8080, "source": "default"}


def test_config_command_without_a_file(project: Path) -> None:
    text = invoke("config").output
    assert text.startswith("# no config file")
    assert 'mode = "auto"' in text
