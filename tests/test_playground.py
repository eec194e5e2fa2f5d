"""The playground's API (`POST /api/playground/run`, `/api/playground/probe`) against a real UI
process, a real proxy and the fake upstream: runs are logged in namespace `playground` with the
cache bypassed, a typed key is nowhere afterwards, and offline never hangs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmreel.ui.server import UiProcess
from tests.conftest import ProxyThread
from tests.fakeupstream import FakeUpstream
from tests.leaks import leaks
from tests.test_e2e import openai_client
from tests.test_probe import logged_ids

MakeProxy = Callable[..., ProxyThread]
#: A key typed into the page: distinctive, so that any copy of it is found.
TYPED = "sk-typed-PLAYGROUNDLEAKCHECK9f3a7c21d0"


class Ui:
    def __init__(self, process: UiProcess) -> None:
        self.process = process
        self.http = httpx.Client(base_url=process.url, timeout=60, trust_env=False)
        page = self.http.get("/")
        self.csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        self.origin = process.url.rstrip("/")

    def post(self, path: str, payload: dict[str, Any], **headers: str) -> httpx.Response:
        return self.http.post(path, json=payload,
                              headers={"x-csrf-token": self.csrf, "origin": self.origin, **headers})  # fmt: skip


@pytest.fixture
def exchange(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str, tmp_path: Path
) -> Iterator[dict[str, Any]]:
    """One chat exchange in the log, and the proxy (still running) the playground goes through."""
    proxy = make_proxy()
    client = openai_client(proxy, fake, bundle)
    client.chat.completions.create(model="gpt-4o-mini", messages=[  # type: ignore[arg-type]
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of Peru?"}])  # fmt: skip
    proxy.stop()
    (record,) = logged_ids(tmp_path / "store")
    running = make_proxy()
    fake.reset()
    yield {"id": record["id"], "proxy": running, "store": tmp_path / "store"}


def start_ui(exchange: dict[str, Any], confdir: Path, **kw: Any) -> Ui:
    process = UiProcess(store=str(exchange["store"]), port=0, proxy=exchange["proxy"].url,
                        confdir=str(confdir), **kw)  # fmt: skip
    process.start()
    return Ui(process)


@pytest.fixture
def no_env_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_runs_are_logged_in_the_playground_namespace_with_the_cache_bypassed(
    exchange: dict[str, Any], fake: FakeUpstream, confdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-00000000000000000000000")
    ui = start_ui(exchange, confdir)
    try:
        start = ui.http.get("/api/playground", params={"from": exchange["id"]}).json()
        assert start["fields"] == {"model": "gpt-4o-mini", "system": "Be brief.",
                                   "user": "Capital of Peru?", "temperature": None}  # fmt: skip
        assert start["env_key"] is True and "sk-env" not in json.dumps(start)
        reply = ui.post("/api/playground/run", {"from": exchange["id"], "request": start["request"],
                                                "edits": {"user": "Capital of Chile?"}, "n": 2, "record": False})  # fmt: skip
        assert reply.status_code == 200, reply.text
        result = reply.json()
        assert len(result["ids"]) == 2 and all(result["ids"])
        assert len(fake.requests) == 2  # bypassed: both went upstream though they are identical
        sent = json.loads(fake.requests[0].body)
        assert sent["messages"][-1]["content"] == "Capital of Chile?"
        assert fake.requests[0].header("authorization") == "Bearer sk-env-00000000000000000000000"
        run = result["runs"][0]
        assert run["cache"] == "bypass" and run["status"] == 200 and "Chile" in run["text"]
        assert ["-", "Peru"] in run["diff"] and ["+", "Chile"] in run["diff"]
        assert result["request"]["body"]["messages"][-1]["content"] == "Capital of Chile?"
        logged = ui.http.get(f"/api/exchanges/{result['ids'][0]}").json()
        assert logged["namespace"] == "playground" and logged["recorded"] is False
        # Ticked "record": the answer is recorded (llmreel-cache: refresh).
        recorded = ui.post("/api/playground/run", {"from": exchange["id"], "record": True}).json()
        assert recorded["runs"][0]["cache"] == "refresh"
        assert ui.http.get(f"/api/exchanges/{recorded['ids'][0]}").json()["recorded"] is True
        # The answer streams as NDJSON lines, ending with the same result.
        lines = [json.loads(line) for line in ui.post(
            "/api/playground/run", {"from": exchange["id"]}, accept="application/x-ndjson").text.splitlines()]  # fmt: skip
        assert lines[-1]["event"] == "done" and lines[-1]["ids"][0]
        # Run ×N, the probe, over the API.
        report = ui.post("/api/playground/probe", {"from": exchange["id"], "n": 3}).json()
        assert report["stable"] is True and report["distinct"] == 1 and len(report["runs"]) == 3
    finally:
        ui.process.stop()


def test_bad_requests_are_refused_clearly(exchange: dict[str, Any], fake: FakeUpstream, confdir: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-00000000000000000000000")
    ui = start_ui(exchange, confdir)
    try:
        no_csrf = ui.http.post("/api/playground/run", json={"from": exchange["id"]})
        assert no_csrf.status_code == 403 and "CSRF" in no_csrf.json()["error"]
        assert ui.post("/api/playground/run", {"from": "nope"}).status_code == 404
        assert ui.post("/api/playground/run", {"from": exchange["id"], "n": 99}).status_code == 400
        # The environment's key is not sent to a host the user typed: a typed key is needed.
        elsewhere = ui.post("/api/playground/run", {"from": exchange["id"], "request": {
            "url": "https://api.example.test/v1/chat/completions", "body": {"model": "m", "messages": []}}})  # fmt: skip
        assert elsewhere.status_code == 409 and elsewhere.json()["reason"] == "no_key"
        assert fake.requests == []
    finally:
        ui.process.stop()


def test_offline_refuses_at_once(
    exchange: dict[str, Any], fake: FakeUpstream, confdir: Path
) -> None:
    ui = start_ui(exchange, confdir, offline=True)
    try:
        reply = ui.post("/api/playground/run", {"from": exchange["id"], "key": TYPED})
        assert reply.status_code == 409
        assert (
            reply.json()["reason"] == "offline" and "cannot call upstream" in reply.json()["error"]
        )
        assert ui.post("/api/playground/probe", {"from": exchange["id"]}).status_code == 409
        page = ui.http.get("/playground", params={"from": exchange["id"]}).text
        assert (
            "the playground cannot call upstream" in page
            and 'id="pg-send" class="primary" disabled' in page
        )
        assert fake.requests == []
    finally:
        ui.process.stop()


def test_a_typed_key_is_written_nowhere(
    exchange: dict[str, Any], fake: FakeUpstream, confdir: Path, tmp_path: Path, no_env_keys: None
) -> None:
    ui = start_ui(exchange, confdir)
    outputs: list[str] = []
    try:
        missing = ui.post("/api/playground/run", {"from": exchange["id"]})
        assert missing.status_code == 409 and missing.json()["reason"] == "no_key"
        result = ui.post(
            "/api/playground/run", {"from": exchange["id"], "key": TYPED, "n": 2}
        ).json()
        outputs.append(json.dumps(result))
        assert fake.requests[0].header("authorization") == f"Bearer {TYPED}"  # it was used
        probe = ui.post("/api/playground/probe", {"from": exchange["id"], "key": TYPED, "n": 2})
        outputs.append(probe.text)
        assert probe.status_code == 200, probe.text
        for ident in [*result["ids"], probe.json()["runs"][0]["id"]]:
            outputs.append(ui.http.get(f"/api/exchanges/{ident}").text)
            outputs.append(ui.http.get(f"/exchanges/{ident}").text)
        outputs.append(ui.http.get("/playground", params={"from": exchange["id"]}).text)
        outputs.append(ui.http.get("/api/exchanges").text)
    finally:
        ui.process.stop()
        exchange["proxy"].stop()
    assert all(TYPED not in text for text in outputs)
    assert leaks(exchange["store"], {"typed key": TYPED}) == []
    for command in (["log", "export", "--store", str(exchange["store"]), "-o", str(tmp_path / "log.jsonl")],
                    ["cache", "export", "--store", str(exchange["store"]), str(tmp_path / "export")]):  # fmt: skip
        done = subprocess.run([sys.executable, "-c", "from llmreel.cli.main import main; main()", *command],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert TYPED not in done.stdout + done.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file() and "confdir" not in path.parts:
            assert TYPED.encode() not in path.read_bytes(), path


def test_serve_mode_offline_ui_says_the_playground_cannot_call_upstream(
    exchange: dict[str, Any], fake: FakeUpstream, confdir: Path
) -> None:
    """`serve --mode offline --ui`: the UI's playground goes through that proxy, and is offline."""
    command = [sys.executable, "-c", "from llmreel.cli.main import main; main()", "serve", "--mode",
               "offline", "--port", "0", "--metrics-port", "0", "--ui", "--ui-port", "0", "--store",
               str(exchange["store"]), "--confdir", str(confdir), "-q"]  # fmt: skip
    serve = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert serve.stdout is not None
        line = serve.stdout.readline()
        url = re.search(r"\| ui (http://\S+)", line)
        assert url is not None, line
        process = UiProcess(store=str(exchange["store"]))
        process.url = url.group(1)
        ui = Ui(process)
        assert (
            ui.http.get("/api/playground", params={"from": exchange["id"]}).json()["offline"]
            is True
        )
        reply = ui.post("/api/playground/run", {"from": exchange["id"], "key": TYPED})
        assert reply.status_code == 409 and reply.json()["reason"] == "offline"
        assert fake.requests == []
    finally:
        serve.terminate()
        serve.wait(30)
