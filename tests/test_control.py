"""The control API: contexts that scope calls per test, for any test runner, and a Node example."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmreel.engine.control import Contexts, ControlServer, Recent
from llmreel.metering.report import RunReport
from llmreel.storage.lmdbstore import LmdbStore
from tests.conftest import ProxyThread
from tests.fakeupstream import FakeUpstream
from tests.test_cli import LLMREEL

REPO = Path(__file__).resolve().parent.parent


def test_routes_answer_in_json_and_errors_say_what_to_do() -> None:
    server = ControlServer(Contexts(), Recent(), RunReport(hits=2))
    status, created = server.handle("POST", "/contexts", b'{"namespace": "test_a", "session": "s1"}')
    assert status == 201 and created["token"].startswith("ctx")
    token = created["token"]
    assert server.contexts.get(token) is not None
    assert server.handle("PUT", f"/contexts/{token}", b'{"namespace": "test_b"}') == (
        200, {"token": token, "namespace": "test_b", "session": "s1"})  # fmt: skip
    assert server.handle("PUT", "/context", b'{"namespace": "everyone"}')[1]["namespace"] == "everyone"
    assert server.handle("GET", "/report", b"")[1]["hits"] == 2
    assert server.handle("GET", "/exchanges?since=0", b"") == (200, {"items": [], "marker": 0})
    assert server.handle("PUT", "/contexts/ctx0000000000000000", b"{}")[0] == 404
    status, error = server.handle("POST", "/contexts", json.dumps({"namespace": "x" * 201}).encode())
    assert status == 400 and "namespace" in error["error"]
    assert server.handle("POST", "/contexts", b"not json")[0] == 400
    assert "docs/control.md" in server.handle("DELETE", "/nothing", b"")[1]["error"]


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())  # type: ignore[no-any-return]


AGENT = textwrap.dedent("""
    import json, os, ssl, sys, urllib.request
    import httpx
    control, proxy, namespace = os.environ["CONTROL"], os.environ["PROXY"], sys.argv[1]
    request = urllib.request.Request(control + "/contexts", method="POST",
                                     data=json.dumps({"namespace": namespace}).encode())
    token = json.loads(urllib.request.urlopen(request).read())["token"]
    # The token rides in the proxy URL's user name: HTTPS_PROXY=http://TOKEN@127.0.0.1:PORT.
    scoped = proxy.replace("http://", f"http://{token}@")
    with httpx.Client(proxy=scoped, verify=ssl.create_default_context(cafile=os.environ["BUNDLE"])) as client:
        for n in range(3):  # the same prompts in every process
            reply = client.post(os.environ["UPSTREAM"] + "/v1/chat/completions", json={
                "model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"step {n}"}]})
            assert reply.status_code == 200, reply.text
    mine = json.loads(urllib.request.urlopen(f"{control}/exchanges?since=0&context={token}").read())
    print(json.dumps(sorted({item["namespace"] for item in mine["items"]}) + [len(mine["items"])]))
""")


def test_parallel_processes_keep_their_own_namespaces(
    make_proxy: Callable[..., ProxyThread], fake: FakeUpstream, bundle: str, tmp_path: Path
) -> None:
    proxy = make_proxy(control_port=0)
    assert proxy.running is not None and proxy.running.control_url
    env = {**os.environ, "CONTROL": proxy.running.control_url, "PROXY": proxy.url, "BUNDLE": bundle,
           "UPSTREAM": fake.url}  # fmt: skip
    procs = [
        subprocess.Popen([sys.executable, "-c", AGENT, name], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for name in ("worker_a", "worker_b")
    ]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    assert [json.loads(out) for out, _ in outputs] == [["worker_a", 3], ["worker_b", 3]]
    # Nothing bled: each namespace recorded its own three calls, each billed once.
    assert len(fake.requests) == 6
    proxy.stop()
    with LmdbStore(tmp_path / "store", create=False) as store:
        assert sorted(r.namespace for r in store.iter()) == ["worker_a"] * 3 + ["worker_b"] * 3


def test_an_unknown_context_is_refused_clearly(
    make_proxy: Callable[..., ProxyThread], fake: FakeUpstream, bundle: str
) -> None:
    import httpx

    proxy = make_proxy(control_port=0)
    with httpx.Client(proxy=proxy.url, verify=ssl.create_default_context(cafile=bundle)) as client:
        reply = client.post(f"{fake.url}/v1/chat/completions", headers={"llmreel-context": "ctx0123456789abcdef"},
                            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})  # fmt: skip
    assert reply.status_code == 400 and "POST /contexts" in reply.text
    assert fake.requests == []


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_node_example_records_and_replays_per_test(
    fake: FakeUpstream, confdir: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    base = [LLMREEL, "run", "--store", str(store), "--confdir", str(confdir),
            "--set", f"ssl_verify_upstream_trusted_ca={fake.cert_path}",
            "--reverse", f"{fake.url}@0", "--provider-host", "127.0.0.1=openai"]  # fmt: skip
    node = ["--", "node", "--test", str(REPO / "examples" / "node")]
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-node-000000000000000"}
    first = subprocess.run([*base, *node], capture_output=True, text=True, timeout=180, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert len(fake.requests) == 2
    fake.reset()
    offline = subprocess.run([*base, "--mode", "offline", *node], capture_output=True, text=True,
                             timeout=180, env=env)  # fmt: skip
    assert offline.returncode == 0, offline.stdout + offline.stderr
    assert fake.requests == []
    with LmdbStore(store, create=False) as opened:
        assert sorted(r.namespace for r in opened.iter()) == ["node-greets", "node-same-prompt"]
