"""The `llmreel` command as a user runs it: real processes, real signals."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from tests.fakeupstream import FakeUpstream

LLMREEL = str(Path(sys.executable).parent / "llmreel")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_serve(*args: str, cwd: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [LLMREEL, "serve", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("llmreel ready:"):
        proc.kill()
        raise AssertionError(f"no ready line: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    return proc, line


def serve_args(tmp_path: Path, confdir: Path, fake: FakeUpstream, *extra: str) -> list[str]:
    return [
        "--port", "0", "--metrics-port", "0", "--store", str(tmp_path / "store"), "--confdir", str(confdir),
        "--set", f"ssl_verify_upstream_trusted_ca={fake.cert_path}", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_prints_ready_line_and_stops_cleanly(
    tmp_path: Path, confdir: Path, fake: FakeUpstream, bundle: str, sig: signal.Signals
) -> None:
    metrics_port = free_port()
    args = serve_args(tmp_path, confdir, fake)
    args[args.index("--metrics-port") + 1] = str(metrics_port)
    proc, line = start_serve(*args, cwd=tmp_path)
    try:
        match = re.search(r"regular (http://127\.0\.0\.1:\d+)", line)
        assert match, line
        assert "mode auto" in line and str(tmp_path / "store") in line
        assert f"metrics http://127.0.0.1:{metrics_port}/metrics" in line
        assert f"CA {confdir}/mitmproxy-ca-cert.pem" in line
        with httpx.Client(proxy=match.group(1), verify=ssl.create_default_context(cafile=bundle)) as client:
            r = client.post(f"{fake.url}/v1/chat/completions",
                            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
            assert r.headers["llmreel-cache"] == "miss"
        scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        assert 'cache="miss"' in scrape
    finally:
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr


def test_serve_refuses_a_busy_port_with_advice(tmp_path: Path, confdir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [LLMREEL, "serve", "--port", str(port), "--metrics-port", "0", "--store", str(tmp_path / "s"),
             "--confdir", str(confdir)], capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert "--port" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_remote_bind_without_auth(tmp_path: Path) -> None:
    result = subprocess.run([LLMREEL, "serve", "--host", "0.0.0.0"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--proxy-auth" in result.stderr and "--allow-remote" in result.stderr


def test_run_sets_up_the_environment_and_returns_the_exit_code(
    tmp_path: Path, confdir: Path, fake: FakeUpstream
) -> None:
    script = tmp_path / "agent.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, sys
        import openai
        # Only the environment llmreel run sets: no explicit proxy, no explicit CA.
        client = openai.OpenAI(base_url="{fake.url}/v1", api_key="sk-test-1234567890abcdefghij")
        reply = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{{"role": "user", "content": "from a child"}}])
        names = ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "SSL_CERT_FILE",
                 "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "NO_PROXY",
                 "LLMREEL_RUN_ID"]
        print(json.dumps({{"cache": reply.headers["llmreel-cache"], "env": {{n: os.environ.get(n) for n in names}}}}))
        sys.exit(3)
    """))
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
    cmd = [LLMREEL, "run", "--store", str(tmp_path / "store"), "--confdir", str(confdir),
           "--set", f"ssl_verify_upstream_trusted_ca={fake.cert_path}", "--", sys.executable, str(script)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 3, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["cache"] == "miss"
    proxies = {report["env"][n] for n in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")}
    assert len(proxies) == 1 and proxies.pop().startswith("http://127.0.0.1:")
    bundles = {report["env"][n] for n in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")}
    assert bundles == {str(confdir / "llmreel-ca-bundle.pem")}
    assert report["env"]["NO_PROXY"] == ""
    # The run's id: given to the child, named in the report, and on every exchange it logged.
    run_id = report["env"]["LLMREEL_RUN_ID"]
    assert re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{26}", run_id)
    assert f"(run {run_id})" in result.stderr
    logged = subprocess.run([LLMREEL, "log", "ls", "--store", str(tmp_path / "store"), "--json"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert [json.loads(line)["run"] for line in logged.stdout.splitlines()] == [run_id]

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert json.loads(again.stdout.strip().splitlines()[-1])["cache"] == "hit"


def test_run_sets_base_urls_by_provider_says_what_it_cannot_and_counts_unused(
    tmp_path: Path, confdir: Path, fake: FakeUpstream
) -> None:
    from llmreel.storage.lmdbstore import LmdbStore
    from llmreel.storage.records import Recording

    with LmdbStore(tmp_path / "store") as store:  # a recording this run has no reason to replay
        store.put(Recording(key="0" * 32, namespace="default", request={"old": True}, status=200,
                            headers=[], body=b"{}"))  # fmt: skip
    script = tmp_path / "agent.py"
    script.write_text(textwrap.dedent("""
        import json, os
        import openai
        # No base_url: the SDK reads OPENAI_BASE_URL, which llmreel run set for the reverse listener.
        client = openai.OpenAI(api_key="sk-test-1234567890abcdefghij", max_retries=0)
        reply = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "via the reverse listener"}])
        print(json.dumps({"cache": reply.headers["llmreel-cache"],
                          "base": os.environ.get("OPENAI_BASE_URL")}))
    """))
    cmd = [LLMREEL, "run", "--store", str(tmp_path / "store"), "--confdir", str(confdir),
           "--set", f"ssl_verify_upstream_trusted_ca={fake.cert_path}",
           "--reverse", f"{fake.url}@0", "--provider-host", "127.0.0.1=openai",
           "--reverse", "https://llm.internal@0", "--", sys.executable, str(script)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    child = json.loads(result.stdout.strip().splitlines()[-1])
    assert child["cache"] == "miss"
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", child["base"]), child
    assert len(fake.requests) == 1
    # The listener whose API llmreel cannot tell: which base URL to use, and how to name the API.
    advice = next(line for line in result.stderr.splitlines() if "listener for https://llm.internal" in line)
    assert re.search(r"set your client's base URL to http://127\.0\.0\.1:\d+ ", advice), advice
    assert "--provider-host llm.internal=openai" in advice
    # The unused recording is counted, not listed.
    assert "1 recording(s) in the namespaces used were not replayed" in result.stderr
    assert "unused 0000" not in result.stderr


def test_run_passes_success_through(tmp_path: Path, confdir: Path) -> None:
    result = subprocess.run(
        [LLMREEL, "run", "--store", str(tmp_path / "s"), "--confdir", str(confdir), "--", "true"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_run_reports_a_missing_command(tmp_path: Path, confdir: Path) -> None:
    result = subprocess.run(
        [LLMREEL, "run", "--confdir", str(confdir), "--", "no-such-command-xyz"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode != 0
    assert "command not found: no-such-command-xyz" in result.stderr


def test_env_prints_exports_for_a_running_proxy(confdir: Path) -> None:
    result = subprocess.run(
        [LLMREEL, "env", "--port", "9999", "--confdir", str(confdir), "--reverse", "https://api.openai.com@8081",
         "--reverse", "https://api.anthropic.com@8082"], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    exports = dict(line.removeprefix("export ").split("=", 1) for line in result.stdout.splitlines())
    assert exports["HTTPS_PROXY"] == exports["http_proxy"] == "http://127.0.0.1:9999"
    assert exports["SSL_CERT_FILE"].endswith("llmreel-ca-bundle.pem")
    assert exports["OPENAI_BASE_URL"] == "http://127.0.0.1:8081/v1"
    assert exports["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:8082"
    shell = subprocess.run(["bash", "-c", result.stdout + 'echo "$HTTPS_PROXY"'], capture_output=True, text=True)
    assert shell.stdout.strip() == "http://127.0.0.1:9999"
    # A host the proxy was told about with --provider-host gets its provider's variable too.
    custom = subprocess.run(
        [LLMREEL, "env", "--port", "9999", "--confdir", str(confdir), "--reverse", "https://llm.internal@8083",
         "--provider-host", "llm.internal=openai"], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "export OPENAI_BASE_URL=http://127.0.0.1:8083/v1" in custom.stdout, custom.stderr


def test_ca_creates_a_private_ca_and_explains_trust(tmp_path: Path) -> None:
    confdir = tmp_path / "ca"
    result = subprocess.run([LLMREEL, "ca", "--confdir", str(confdir)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    cert = Path(result.stdout.splitlines()[0])
    assert cert == confdir / "mitmproxy-ca-cert.pem" and cert.exists()
    assert "update-ca-certificates" in result.stdout and "SSL_CERT_FILE" in result.stdout
    assert stat.S_IMODE((confdir / "mitmproxy-ca.pem").stat().st_mode) == 0o600
    bundle = (confdir / "llmreel-ca-bundle.pem").read_text()
    assert cert.read_text().strip() in bundle
    assert bundle.count("BEGIN CERTIFICATE") > 10  # the system roots are there too


def test_help_lists_the_commands() -> None:
    result = subprocess.run([LLMREEL, "--help"], capture_output=True, text=True, timeout=60)
    for command in ("serve", "run", "env", "ca"):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.M), result.stdout
    _ = time


def test_offline_run_fails_on_a_swallowed_miss_and_reports_it(
    tmp_path: Path, confdir: Path, fake: FakeUpstream
) -> None:
    script = tmp_path / "swallow.py"
    script.write_text(textwrap.dedent(f"""
        import openai
        client = openai.OpenAI(base_url="{fake.url}/v1", api_key="sk-test-1234567890abcdefghij", max_retries=0)
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "unrecorded"}}])
        except openai.APIStatusError as exc:
            print("swallowed:", exc)
    """))
    base = [LLMREEL, "run", "--store", str(tmp_path / "store"), "--confdir", str(confdir), "--mode", "offline"]
    result = subprocess.run([*base, "--", sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert "swallowed:" in result.stdout and "llmreel cache miss" in result.stdout
    assert result.returncode == 1, result.stderr
    assert "1 offline miss(es)" in result.stderr
    assert "MISS POST" in result.stderr and "--fail-on-miss" in result.stderr
    relaxed = subprocess.run([*base, "--no-fail-on-miss", "--", sys.executable, str(script)],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert relaxed.returncode == 0, relaxed.stderr
