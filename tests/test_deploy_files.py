"""Static checks of the deployment files: Dockerfile, docker-compose.yml, Prometheus and Grafana
provisioning, and the Grafana dashboard. No network, no docker; promtool is used when present."""

from __future__ import annotations

import fnmatch
import http.server
import json
import re
import shlex
import socket
import subprocess
import sys
import threading
import types
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.conftest import need_binary
from tests.dashboards import (
    METRICS,
    TARGET_LABELS,
    dashboard_queries,
    grouping_labels,
    iter_panels,
    iter_targets,
    range_windows,
    selectors,
    series_names,
    substitute,
)

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "docker-compose.yml"
PROMETHEUS_YML = REPO / "deploy/prometheus/prometheus.yml"
GRAFANA_PROVISIONING = REPO / "deploy/grafana/provisioning"
DATASOURCE_YML = GRAFANA_PROVISIONING / "datasources/prometheus.yml"
DASHBOARD_PROVIDER_YML = GRAFANA_PROVISIONING / "dashboards/llmreel.yml"
DASHBOARD = REPO / "dashboards/llmreel.json"

PROXY_PORT = 8080
METRICS_PORT = 9464
EXPECTED_CMD = [
    "llmreel", "serve", "--host", "0.0.0.0", "--metrics-host", "0.0.0.0", "--allow-remote",
]  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Loaders
# ------------------------------------------------------------------------------------------------
def load_yaml(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    try:
        import yaml  # type: ignore[import-untyped]

        return yaml.safe_load(text)
    except ImportError:
        from ruamel.yaml import YAML  # shipped with mitmproxy

        return YAML(typ="safe", pure=True).load(text)


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and buf):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            instr, _, args = buf.strip().partition(" ")
            out.append((instr.upper(), args.strip()))
        buf = ""
    assert not buf.strip(), "Dockerfile ends inside a line continuation"
    return out


def exec_or_shell(args: str) -> list[str]:
    """Arguments of CMD/ENTRYPOINT/VOLUME: JSON (exec) form, or split shell form."""
    if args.startswith("["):
        value = json.loads(args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value)
        return value
    return shlex.split(args)


def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))


def instr_args(name: str) -> list[str]:
    return [args for instr, args in dockerfile() if instr == name]


def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE)
    assert isinstance(data, dict)
    return data


def parse_port(spec: Any) -> tuple[str | None, int, int]:
    """(host_ip, published, target) of a compose port entry (short or long syntax)."""
    if isinstance(spec, dict):
        return spec.get("host_ip"), int(spec["published"]), int(spec["target"])
    parts = str(spec).split("/")[0].split(":")
    if len(parts) == 3:
        return parts[0], int(parts[1]), int(parts[2])
    if len(parts) == 2:
        return None, int(parts[0]), int(parts[1])
    return None, int(parts[0]), int(parts[0])


def parse_volume(spec: Any) -> tuple[str, str]:
    """(source, target) of a compose volume entry (short or long syntax)."""
    if isinstance(spec, dict):
        return str(spec["source"]), str(spec["target"])
    parts = str(spec).split(":")
    assert len(parts) in (2, 3), f"unexpected volume spec {spec!r}"
    return parts[0], parts[1]


def is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def service_volumes(name: str) -> list[tuple[str, str]]:
    return [parse_volume(v) for v in compose()["services"][name].get("volumes", [])]


def bind_source(source: str) -> Path:
    return (COMPOSE.parent / source).resolve()


def dashboard() -> dict[str, Any]:
    with open(DASHBOARD, encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def exprs() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(p, t) for p, t in iter_targets(dashboard()) if t.get("expr")]


def norm(expr: str) -> str:
    return re.sub(r"\s+", " ", expr).strip()


# ------------------------------------------------------------------------------------------------
# All files parse
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    [COMPOSE, PROMETHEUS_YML, DATASOURCE_YML, DASHBOARD_PROVIDER_YML],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_yaml_files_parse(path: Path) -> None:
    assert isinstance(load_yaml(path), dict)


def test_dashboard_is_json_with_identity() -> None:
    d = dashboard()
    assert d["uid"] == "llmreel"
    assert d["title"] == "llmreel — LLM traffic"
    assert 39 <= d["schemaVersion"] <= 41
    assert d.get("id") is None, "a provisioned dashboard must not carry a database id"
    assert d["panels"], "dashboard has no panels"


# ------------------------------------------------------------------------------------------------
# Dockerfile
# ------------------------------------------------------------------------------------------------
def test_dockerfile_base_image_and_user() -> None:
    froms = instr_args("FROM")
    assert len(froms) == 1 and froms[0].split()[0] == "python:3.12-slim"
    users = instr_args("USER")
    assert users, "image must not run as root"
    assert users[-1].split(":")[0] == "10001"
    runs = " ".join(instr_args("RUN"))
    assert re.search(r"useradd\b[^&;]*--uid 10001\b", runs), "user 10001 is never created"
    assert re.search(r"chown -R 10001(:10001)?\b[^&;]*/data\b", runs), "/data not owned by 10001"


def test_dockerfile_installs_project_with_pip() -> None:
    runs = instr_args("RUN")
    assert any(re.search(r"\bpip install\b[^&;]*\s\.(\s|$)", r) for r in runs), runs


def test_dockerfile_copy_sources_exist_and_cover_the_build() -> None:
    copied: set[str] = set()
    for args in instr_args("COPY") + instr_args("ADD"):
        parts = [p for p in (exec_or_shell(args)) if not p.startswith("--")]
        assert len(parts) >= 2, f"COPY needs a source and a destination: {args}"
        for src in parts[:-1]:
            assert (REPO / src).exists(), f"COPY source {src} does not exist"
            assert not dockerignored(src), f"COPY source {src} is excluded by .dockerignore"
            copied.add(str(PurePosixPath(src)))
    # What setuptools needs to build the wheel: pyproject, its readme, and the mapped folders.
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    import tomllib

    meta = tomllib.loads(pyproject)
    needed = {"pyproject.toml", meta["project"]["readme"]}
    needed |= set(meta["tool"]["setuptools"]["package-dir"].values())
    assert needed <= copied, f"not copied into the image: {sorted(needed - copied)}"
    assert meta["project"]["name"] == "llmreel"
    assert meta["project"]["scripts"]["llmreel"].startswith("llmreel.")


def test_dockerfile_command_listens_on_all_interfaces() -> None:
    entry = exec_or_shell(instr_args("ENTRYPOINT")[-1]) if instr_args("ENTRYPOINT") else []
    cmd = exec_or_shell(instr_args("CMD")[-1]) if instr_args("CMD") else []
    assert instr_args("CMD")[-1].startswith("["), "use exec form so signals reach llmreel"
    assert entry + cmd == EXPECTED_CMD
    text = DOCKERFILE.read_text(encoding="utf-8")
    # The comment explaining --allow-remote and the safe way to publish the port.
    assert "--proxy-auth" in text and "127.0.0.1:8080:8080" in text


def test_dockerfile_volumes_env_and_ports() -> None:
    volumes = {v for args in instr_args("VOLUME") for v in exec_or_shell(args)}
    assert volumes == {"/data", "/home/llmreel/.mitmproxy"}
    env = " ".join(instr_args("ENV"))
    m = re.search(r"\bLLMREEL_STORE=(\S+)", env)
    assert m, "LLMREEL_STORE not set"
    assert PurePosixPath(m.group(1)).is_relative_to("/data"), "the store must live in the volume"
    exposed = {int(p.split("/")[0]) for args in instr_args("EXPOSE") for p in args.split()}
    assert exposed == {PROXY_PORT, METRICS_PORT}


def healthcheck_code() -> list[str]:
    (args,) = instr_args("HEALTHCHECK")
    _, sep, cmd = args.partition("CMD ")
    assert sep, "HEALTHCHECK has no CMD"
    argv = exec_or_shell(cmd.strip())
    assert argv[0] in ("python", "python3") and argv[1] == "-c", argv
    return argv


def test_healthcheck_fetches_metrics_and_fails_when_down() -> None:
    argv = healthcheck_code()
    code = argv[2]
    assert f"http://127.0.0.1:{METRICS_PORT}/metrics" in code

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path == "/metrics"
            self.send_response(200 if ok else 404)
            self.end_headers()
            self.wfile.write(b"llmreel_build_info 1\n")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        up = subprocess.run(
            [sys.executable, "-c", code.replace(str(METRICS_PORT), str(port))],
            check=False, capture_output=True, timeout=30,
        )  # fmt: skip
        assert up.returncode == 0, up.stderr
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    down = subprocess.run(
        [sys.executable, "-c", code.replace(str(METRICS_PORT), str(closed))],
        check=False, capture_output=True, timeout=30,
    )  # fmt: skip
    assert down.returncode != 0


def test_cli_knows_the_dockerfile_flags() -> None:
    from click.testing import CliRunner

    from llmreel.cli.main import main  # a broken CLI must fail here, not skip

    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0, result.output
    for flag in (a for a in EXPECTED_CMD if a.startswith("--")):
        assert flag in result.output, f"`llmreel serve` has no {flag} option"
    assert "--proxy-auth" in result.output


# ------------------------------------------------------------------------------------------------
# .dockerignore
# ------------------------------------------------------------------------------------------------
def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def dockerignored(relpath: str) -> bool:
    """Docker's rule: the last matching pattern wins; a path is excluded with its parents."""
    path = PurePosixPath(relpath)
    candidates = [str(path), *(str(p) for p in path.parents if str(p) != ".")]
    excluded = False
    for pattern in dockerignore_patterns():
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        pats = [pat, pat[3:]] if pat.startswith("**/") else [pat]
        if any(fnmatch.fnmatchcase(c, p) for c in candidates for p in pats):
            excluded = not negate
    return excluded


def test_dockerignore_excludes_local_state() -> None:
    for path in (".venv", ".git", ".llmreel", ".pytest_cache", ".mypy_cache", ".ruff_cache",
                 "proxy/__pycache__/x.pyc", ".venv/lib/python3.12/site-packages/x.py"):  # fmt: skip
        assert dockerignored(path), f"{path} is sent to the docker build context"
    for path in ("pyproject.toml", "README.md", "proxy/cli/main.py", "addons/recorder.py"):
        assert not dockerignored(path), f"{path} is needed by the image build"


# ------------------------------------------------------------------------------------------------
# docker-compose.yml
# ------------------------------------------------------------------------------------------------
def test_compose_services() -> None:
    services = compose()["services"]
    assert set(services) == {"llmreel", "prometheus", "grafana", "redis"}
    assert services["llmreel"]["build"] in (".", {"context": "."})
    assert str(services["prometheus"]["image"]).startswith("prom/prometheus")
    assert str(services["grafana"]["image"]).startswith("grafana/grafana")
    for name in ("prometheus", "grafana", "redis"):
        image = str(services[name]["image"])
        assert ":" in image and not image.endswith(":latest"), f"pin {name}'s image version"


def test_compose_ports_are_loopback_only() -> None:
    expected = {
        "llmreel": {(PROXY_PORT, PROXY_PORT), (METRICS_PORT, METRICS_PORT)},
        "prometheus": {(9090, 9090)},
        "grafana": {(3000, 3000)},
        "redis": set(),  # the compose network only
    }
    for name, service in compose()["services"].items():
        ports = [parse_port(p) for p in service.get("ports", [])]
        for host_ip, published, _ in ports:
            assert host_ip == "127.0.0.1", f"{name} publishes {published} beyond loopback"
        assert {(pub, tgt) for _, pub, tgt in ports} == expected[name]


def test_compose_redis_is_the_shared_profiles_and_the_proxy_uses_it_then() -> None:
    services = compose()["services"]
    redis = services["redis"]
    assert redis["profiles"] == ["shared"]
    assert str(redis["image"]).startswith(("redis:", "valkey/valkey:"))
    assert "--save" in redis["command"] and "allkeys-lru" in redis["command"]
    # The proxy reads its URL from the environment: empty (off) unless the profile's user sets it.
    env = services["llmreel"]["environment"]
    assert env["LLMREEL_SHARED_URL"] == "${LLMREEL_SHARED_URL:-}"
    header = COMPOSE.read_text()
    assert "COMPOSE_PROFILES=shared LLMREEL_SHARED_URL=redis://redis:6379/0" in header
    from click.testing import CliRunner

    from llmreel.cli.main import main

    result = CliRunner().invoke(main, ["serve", "--help"])
    assert "LLMREEL_SHARED_URL" in result.output


def test_compose_volumes_exist() -> None:
    data = compose()
    declared = set(data.get("volumes") or {})
    used: set[str] = set()
    for name, service in data["services"].items():
        for source, target in (parse_volume(v) for v in service.get("volumes", [])):
            assert target.startswith("/"), f"{name}: volume target {target} is not absolute"
            if is_bind(source):
                assert bind_source(source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: named volume {source} is not declared"
                used.add(source)
    assert used == declared, f"declared but unused volumes: {declared - used}"


def test_compose_llmreel_volumes_match_dockerfile() -> None:
    targets = {t for _, t in service_volumes("llmreel")}
    dockerfile_volumes = {v for args in instr_args("VOLUME") for v in exec_or_shell(args)}
    assert targets == dockerfile_volumes
    for source, _ in service_volumes("llmreel"):
        assert not is_bind(source), "store and CA should be named volumes (owned by uid 10001)"


def test_compose_ports_match_dockerfile_expose() -> None:
    exposed = {int(p.split("/")[0]) for args in instr_args("EXPOSE") for p in args.split()}
    targets = {parse_port(p)[2] for p in compose()["services"]["llmreel"]["ports"]}
    assert targets == exposed


def test_prometheus_config_is_mounted() -> None:
    mounts = {t: s for s, t in service_volumes("prometheus")}
    source = mounts.get("/etc/prometheus/prometheus.yml")
    assert source is not None, "prometheus.yml is not mounted where prom/prometheus reads it"
    assert bind_source(source) == PROMETHEUS_YML.resolve()


# ------------------------------------------------------------------------------------------------
# Prometheus
# ------------------------------------------------------------------------------------------------
def llmreel_job() -> dict[str, Any]:
    cfg = load_yaml(PROMETHEUS_YML)
    jobs = [j for j in cfg["scrape_configs"] if j["job_name"] == "llmreel"]
    assert len(jobs) == 1
    job: dict[str, Any] = jobs[0]
    job.setdefault("scrape_interval", cfg.get("global", {}).get("scrape_interval", "1m"))
    return job


def test_prometheus_scrapes_llmreel() -> None:
    job = llmreel_job()
    assert job["scrape_interval"] == "5s"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"llmreel:{METRICS_PORT}"]
    host, port = targets[0].rsplit(":", 1)
    services = compose()["services"]
    assert host in services, "scrape target is not a compose service"
    assert int(port) in {parse_port(p)[2] for p in services[host]["ports"]}
    exposed = {int(p.split("/")[0]) for args in instr_args("EXPOSE") for p in args.split()}
    assert int(port) in exposed


def test_promtool_check_config() -> None:
    promtool = need_binary("promtool")
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_YML)],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------------------
# Grafana provisioning
# ------------------------------------------------------------------------------------------------
def test_grafana_datasource() -> None:
    cfg = load_yaml(DATASOURCE_YML)
    assert cfg["apiVersion"] == 1
    (ds,) = cfg["datasources"]
    assert ds["type"] == "prometheus" and ds["uid"] == "prometheus"
    url = urlparse(ds["url"])
    services = compose()["services"]
    assert url.scheme == "http" and url.hostname == "prometheus" and url.hostname in services
    assert url.port in {parse_port(p)[2] for p in services["prometheus"]["ports"]}
    # $__rate_interval is derived from this; it must match the actual scrape interval.
    assert ds["jsonData"]["timeInterval"] == llmreel_job()["scrape_interval"]


def test_grafana_provisioning_is_mounted() -> None:
    mounts = {t: s for s, t in service_volumes("grafana")}
    source = mounts.get("/etc/grafana/provisioning")
    assert source is not None, "provisioning not mounted at /etc/grafana/provisioning"
    assert bind_source(source) == GRAFANA_PROVISIONING.resolve()
    assert (bind_source(source) / "datasources/prometheus.yml").is_file()
    assert (bind_source(source) / "dashboards/llmreel.yml").is_file()


def test_grafana_dashboard_provider_path_is_the_dashboards_mount() -> None:
    cfg = load_yaml(DASHBOARD_PROVIDER_YML)
    assert cfg["apiVersion"] == 1
    (provider,) = cfg["providers"]
    assert provider["type"] == "file"
    path = PurePosixPath(provider["options"]["path"])
    mounts = {PurePosixPath(t): s for s, t in service_volumes("grafana")}
    # The provider path must be a mount of the repo's dashboards/ (or lie inside one).
    hits = [(t, s) for t, s in mounts.items() if path == t or path.is_relative_to(t)]
    assert hits, f"provider path {path} is not inside any grafana mount"
    target, source = max(hits, key=lambda ts: len(ts[0].parts))
    host_dir = bind_source(source) / path.relative_to(target)
    assert host_dir.resolve() == DASHBOARD.parent.resolve()
    assert (host_dir / DASHBOARD.name).is_file()


def test_grafana_home_dashboard_path_is_mounted() -> None:
    env = compose()["services"]["grafana"].get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    home = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home is None:
        pytest.skip("no default home dashboard configured")
    path = PurePosixPath(home)
    for source, target in service_volumes("grafana"):
        if path.is_relative_to(target) and is_bind(source):
            assert (bind_source(source) / path.relative_to(target)).is_file()
            return
    pytest.fail(f"{home} is not inside a bind mount")


def test_grafana_access_is_configured() -> None:
    env = compose()["services"]["grafana"].get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    anonymous = str(env.get("GF_AUTH_ANONYMOUS_ENABLED", "")).lower() == "true"
    assert anonymous or "GF_SECURITY_ADMIN_PASSWORD" in env
    if anonymous:
        assert env.get("GF_AUTH_ANONYMOUS_ORG_ROLE") == "Viewer", "anonymous users must not edit"


# ------------------------------------------------------------------------------------------------
# Dashboard: variables
# ------------------------------------------------------------------------------------------------
def variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard()["templating"]["list"]}


def variable_query(var: dict[str, Any]) -> str:
    q = var["query"]
    return norm(q["query"] if isinstance(q, dict) else q)


def test_datasource_variable() -> None:
    ds = variables()["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"


@pytest.mark.parametrize(
    ("name", "query"),
    [
        ("provider", "label_values(llmreel_requests_total, provider)"),
        ("model", 'label_values(llmreel_requests_total{provider=~"$provider"}, model)'),
    ],
)
def test_query_variables(name: str, query: str) -> None:
    var = variables()[name]
    assert var["type"] == "query"
    assert variable_query(var) == query
    if "definition" in var:
        assert norm(var["definition"]) == query
    assert var["multi"] is True and var["includeAll"] is True and var["allValue"] == ".*"
    assert var["datasource"]["uid"] in ("${datasource}", "$datasource")
    # The variable query itself must be runnable once substituted.
    substitute(query)


def test_variables_are_ordered_for_chaining() -> None:
    names = [v["name"] for v in dashboard()["templating"]["list"]]
    assert names.index("datasource") < names.index("provider") < names.index("model")


# ------------------------------------------------------------------------------------------------
# Dashboard: layout
# ------------------------------------------------------------------------------------------------
def test_panel_ids_unique() -> None:
    ids = [p["id"] for p in iter_panels(dashboard())]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"


def _overlap(a: dict[str, int], b: dict[str, int]) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


def test_grid_positions_fit_and_do_not_overlap() -> None:
    d = dashboard()
    groups = [d["panels"]] + [p.get("panels", []) for p in d["panels"] if p["type"] == "row"]
    for panels in groups:
        for p in panels:
            g = p["gridPos"]
            assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0, p["title"]
            assert g["x"] + g["w"] <= 24, f"{p['title']} is wider than the grid"
        for i, a in enumerate(panels):
            for b in panels[i + 1 :]:
                assert not _overlap(a["gridPos"], b["gridPos"]), f"{a['title']} / {b['title']}"


def test_panels_sit_under_their_row() -> None:
    panels = dashboard()["panels"]
    rows = [p for p in panels if p["type"] == "row"]
    assert rows and panels[0]["type"] == "row", "dashboard should start with a row"
    current = None
    for p in panels:
        if p["type"] == "row":
            assert p["gridPos"]["w"] == 24 and p["gridPos"]["x"] == 0
            current = p
            continue
        assert current is not None
        nxt = [r for r in rows if r["gridPos"]["y"] > current["gridPos"]["y"]]
        upper = min((r["gridPos"]["y"] for r in nxt), default=10**9)
        assert current["gridPos"]["y"] < p["gridPos"]["y"] < upper, p["title"]
        assert p["gridPos"]["y"] + p["gridPos"]["h"] <= upper, f"{p['title']} runs into a row"


def test_panel_types_and_targets() -> None:
    for p in iter_panels(dashboard()):
        assert p["type"] in {"row", "timeseries", "stat", "bargauge", "table", "gauge"}, p["type"]
        assert p.get("title"), f"panel {p['id']} has no title"
        if p["type"] == "row":
            assert not p.get("targets")
            continue
        targets = p.get("targets", [])
        assert targets, f"{p['title']} has no queries"
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), f"{p['title']}: duplicate refIds"
        for t in targets:
            assert t.get("expr", "").strip(), f"{p['title']}: empty expr"


def test_every_target_uses_the_datasource_variable() -> None:
    for p in iter_panels(dashboard()):
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        for t in p["targets"]:
            assert t.get("datasource") == {"type": "prometheus", "uid": "${datasource}"}, (
                f"{p['title']} {t['refId']}"
            )


# ------------------------------------------------------------------------------------------------
# Dashboard: queries
# ------------------------------------------------------------------------------------------------
def test_every_metric_is_exported_by_llmreel() -> None:
    known = series_names()
    for p, t in exprs():
        sels = selectors(t["expr"])
        assert sels, f"{p['title']}: no metric in {t['expr']}"
        for sel in sels:
            assert sel.metric is not None, f"{p['title']}: selector without a metric name"
            assert sel.metric in known, f"{p['title']}: unknown series {sel.metric}"
            bad = {name for name, _, _ in sel.matchers} - known[sel.metric] - TARGET_LABELS
            assert not bad, f"{p['title']}: {sel.metric} has no label(s) {bad}"


def test_grouping_labels_exist() -> None:
    known = series_names()
    for p, t in exprs():
        available = set(TARGET_LABELS)
        for sel in selectors(t["expr"]):
            available |= known.get(sel.metric or "", frozenset())
        for keyword, labels in grouping_labels(t["expr"]):
            missing = set(labels) - available
            assert not missing, f"{p['title']}: `{keyword}` on labels {missing} no series has"


def _is_var(value: str, name: str) -> bool:
    return value in (f"${name}", f"${{{name}}}")


def test_every_selector_is_filtered_by_the_variables() -> None:
    for p, t in exprs():
        for sel in selectors(t["expr"]):
            labels = series_names().get(sel.metric or "", frozenset())
            for label, var in (("provider", "provider"), ("model", "model"),
                               ("gen_ai_request_model", "model")):  # fmt: skip
                if label not in labels:
                    continue
                m = sel.matcher(label)
                assert m is not None and m[0] == "=~" and _is_var(m[1], var), (
                    f'{p["title"]}: {sel.metric} is not filtered by {label}=~"${var}"'
                )


def test_range_windows_use_grafana_intervals() -> None:
    for p, t in exprs():
        for window in range_windows(t["expr"]):
            assert window in ("$__rate_interval", "$__range"), f"{p['title']}: [{window}]"
        if "$__range" in t["expr"]:
            assert t.get("instant") is True, f"{p['title']}: $__range queries should be instant"


def test_histogram_quantiles_keep_le() -> None:
    for p, t in exprs():
        expr = t["expr"]
        if "histogram_quantile" not in expr:
            continue
        assert all(s.metric and s.metric.endswith("_bucket") for s in selectors(expr))
        groupings = grouping_labels(expr)
        assert groupings, f"{p['title']}: histogram_quantile without sum by (le)"
        for keyword, labels in groupings:
            assert keyword == "by" and "le" in labels, f"{p['title']}: {keyword} {labels}"


def test_units() -> None:
    for p, t in exprs():
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit")
        metrics = {s.metric for s in selectors(t["expr"])}
        if any(m and "cost_usd" in m for m in metrics):
            assert unit == "currencyUSD", f"{p['title']}: dollars shown as {unit}"
        if "histogram_quantile" in t["expr"] and all(m and "_seconds_" in m for m in metrics):
            assert unit == "s", f"{p['title']}: seconds shown as {unit}"


REQUIRED = {
    "requests per second by model":
        r"sum by \(model\) \(rate\(llmreel_requests_total\{[^}]*\}\[\$__rate_interval\]\)\)",
    "spend $/h by model":
        r"sum by \(model\) \(rate\(llmreel_cost_usd_total\{[^}]*\}\[\$__rate_interval\]\)\) \* 3600",
    "tokens per minute by type":
        r"sum by \(type\) \(rate\(llmreel_tokens_total\{[^}]*\}\[\$__rate_interval\]\)\) \* 60\b",
    "cache hit ratio": r"llmreel_requests_total\{[^}]*cache=\"hit\"[^}]*\}.*\) / sum\(",
    "dollars saved": r"llmreel_saved_cost_usd_total\{",
    "p50 latency": r"histogram_quantile\(0\.5, .*gen_ai_client_operation_duration_seconds_bucket",
    "p95 latency": r"histogram_quantile\(0\.95, .*gen_ai_client_operation_duration_seconds_bucket",
    "ttfc p50": r"histogram_quantile\(0\.5, .*time_to_first_chunk_seconds_bucket",
    "ttfc p95": r"histogram_quantile\(0\.95, .*time_to_first_chunk_seconds_bucket",
    "non-2xx share": r"llmreel_requests_total\{[^}]*status_class!=\"2xx\"[^}]*\}.*/",
    "upstream errors": r"llmreel_upstream_errors_total\{",
    "unpriced requests": r"llmreel_unpriced_requests_total\{",
    "top models by spend":
        r"topk\(\d+, sum by \([^)]*model[^)]*\) \(increase\(llmreel_cost_usd_total\{[^}]*\}\[\$__range\]\)\)\)",
}  # fmt: skip


@pytest.mark.parametrize("what", sorted(REQUIRED))
def test_required_panels_present(what: str) -> None:
    pattern = re.compile(REQUIRED[what])
    assert any(pattern.search(norm(t["expr"])) for _, t in exprs()), f"no query for {what}"


# ------------------------------------------------------------------------------------------------
# The helper other tests use, and PromQL syntax
# ------------------------------------------------------------------------------------------------
def test_dashboard_queries_substitutes_everything() -> None:
    queries = dashboard_queries(DASHBOARD)
    assert len(queries) == len(exprs())
    for q in queries:
        assert "$" not in q and "[[" not in q, q
    assert any("[1m]" in q for q in queries) and any("[1h]" in q for q in queries)
    assert any('provider=~".*"' in q for q in queries)
    assert any('gen_ai_request_model=~".*"' in q for q in queries)


def test_dashboard_queries_walks_collapsed_rows_and_rejects_unknown_variables(
    tmp_path: Path,
) -> None:
    d = {
        "panels": [
            {"type": "row", "id": 1, "collapsed": True, "panels": [
                {"type": "timeseries", "id": 2, "targets": [
                    {"refId": "A", "expr": 'sum(rate(x_total{model=~"${model:regex}"}[$__rate_interval]))'},
                ]},
            ]},
            {"type": "stat", "id": 3, "targets": [{"refId": "A", "expr": "up"}, {"refId": "B"}]},
        ]
    }  # fmt: skip
    path = tmp_path / "d.json"
    path.write_text(json.dumps(d))
    assert dashboard_queries(path) == ['sum(rate(x_total{model=~".*"}[1m]))', "up"]
    with pytest.raises(KeyError):
        substitute("rate(x[$unknown_var])")


def test_promql_scanner() -> None:
    expr = (
        'sum by (status_class) (rate(a_total{p=~"$p", s!="2xx"}[$__rate_interval]))'
        " / ignoring (status_class) group_left () sum(rate(a_total[5m])) or vector(0)"
    )
    sels = selectors(expr)
    assert [s.metric for s in sels] == ["a_total", "a_total"]
    assert sels[0].matchers == [("p", "=~", "$p"), ("s", "!=", "2xx")]
    assert grouping_labels(expr) == [
        ("by", ["status_class"]), ("ignoring", ["status_class"]), ("group_left", []),
    ]  # fmt: skip
    assert range_windows(expr) == ["$__rate_interval", "5m"]
    assert [
        s.metric for s in selectors("histogram_quantile(0.9, sum(rate(h_bucket[1m])) by (le))")
    ] == ["h_bucket"]
    assert [s.metric for s in selectors("topk(5, foo offset 1h) > bool 2")] == ["foo"]


def test_promtool_accepts_dashboard_queries(tmp_path: Path) -> None:
    promtool = need_binary("promtool")
    rules = {
        "groups": [{
            "name": "dashboard",
            "rules": [{"record": f"dashboard:query_{i}", "expr": q}
                      for i, q in enumerate(dashboard_queries(DASHBOARD))],
        }]
    }  # fmt: skip
    path = tmp_path / "rules.json"  # JSON is YAML
    path.write_text(json.dumps(rules))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------------------
# The catalogue the dashboard is checked against matches what proxy/metrics.py registers
# ------------------------------------------------------------------------------------------------
def test_metric_catalogue_matches_proxy_metrics() -> None:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics import MetricWrapperBase

    from llmreel.metering.metrics import Metrics, WorkerMetrics

    registry = CollectorRegistry()
    stats: Any = types.SimpleNamespace(size_bytes=1, entries=1)
    m = Metrics(registry, store_stats=lambda: stats)
    exported: dict[str, tuple[str | None, frozenset[str]]] = {}
    workers = WorkerMetrics(CollectorRegistry())  # the supervisor's, with --workers
    for obj in [*vars(m).values(), *vars(workers).values()]:
        if isinstance(obj, MetricWrapperBase):
            name = obj._name + ("_total" if obj._type == "counter" else "")
            exported[name] = (obj._type, frozenset(obj._labelnames))
    for family in registry.collect():  # collector-made families (store gauges)
        name = family.name + ("_total" if family.type == "counter" else "")
        if name not in exported:
            labels = frozenset(k for s in family.samples for k in s.labels)
            exported[name] = (family.type, labels)
    expected: dict[str, tuple[str | None, frozenset[str]]] = {
        name: (fam.kind, fam.labels) for name, fam in METRICS.items()
    }
    assert exported == expected
