"""OpenTelemetry export into a receiver users run: Arize Phoenix (docs/otel.md).

The official OpenAI SDK -> a real llmreel proxy with --otlp-endpoint -> the fake upstream; Phoenix
(`phoenix serve`, SQLite in a temp dir) receives the spans over OTLP/HTTP, and its REST API shows
what it stored. Phoenix is heavy (a minute or two to start here), so it is a tool of its own,
not a project dependency: .ci/run installs it with `uv tool install arize-phoenix`. Without it
this module is skipped on a developer's machine and fails in CI. `LLMREEL_PHOENIX_URL` points the
test at a Phoenix that is already running instead (the test only reads its own run's spans).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from llmreel.core.ids import new_id
from tests.conftest import ProxyThread, wait_until
from tests.fakeupstream import FakeUpstream

MakeProxy = Callable[..., ProxyThread]
pytestmark = pytest.mark.timeout(900)  # Phoenix's start, on a loaded machine
#: A deadline for Phoenix's start (imports and database migrations), not a speed requirement.
PHOENIX_START_S = 600


def phoenix_executable() -> str:
    found = os.environ.get("LLMREEL_PHOENIX") or shutil.which("phoenix")
    local = Path.home() / ".local/bin/phoenix"  # where `uv tool install` puts it
    if found is None and local.exists():
        found = str(local)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(
                "phoenix is not installed; .ci/run installs it (uv tool install arize-phoenix)"
            )
        pytest.skip("phoenix is not installed (uv tool install arize-phoenix)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Phoenix:
    """`phoenix serve` on free ports, with its SQLite database in a temp dir."""

    def __init__(self, executable: str, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PHOENIX_PORT": str(self.port), "PHOENIX_GRPC_PORT": str(free_port()),
               "PHOENIX_HOST": "127.0.0.1", "PHOENIX_WORKING_DIR": str(workdir),
               "PHOENIX_TELEMETRY_ENABLED": "false"}  # fmt: skip
        self.log = workdir / "phoenix.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen([executable, "serve"], env=env, stdout=out,
                                            stderr=subprocess.STDOUT, cwd=workdir)  # fmt: skip

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"phoenix exited: {self.log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{self.url}/v1/projects", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def spans(self) -> list[dict[str, Any]]:
        response = httpx.get(
            f"{self.url}/v1/projects/default/spans", params={"limit": 1000}, timeout=30
        )
        if response.status_code == 404:  # no span arrived yet, so no project either
            return []
        response.raise_for_status()
        return list(response.json()["data"])

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class RunningPhoenix(Phoenix):
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Phoenix]:
    if url := os.environ.get("LLMREEL_PHOENIX_URL"):
        yield RunningPhoenix(url)
        return
    server = Phoenix(phoenix_executable(), tmp_path_factory.mktemp("phoenix"))
    try:
        wait_until(server.ready, "phoenix serving", timeout=PHOENIX_START_S)
        yield server
    finally:
        server.stop()


def client(proxy: ProxyThread, fake: FakeUpstream, bundle: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{fake.url}/v1", api_key="sk-test-0000000000000000000000", max_retries=0,
        http_client=openai.DefaultHttpxClient(proxy=proxy.url, verify=ssl.create_default_context(cafile=bundle)),
    )  # fmt: skip


def attr(span: dict[str, Any], name: str) -> Any:
    """An attribute of a span as Phoenix returns it: flat (`a.b`) or nested (`{"a": {"b"}}`)."""
    attributes = span["attributes"]
    if name in attributes:
        return attributes[name]
    value: Any = attributes
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def test_spans_reach_phoenix_with_their_attributes_grouped_by_thread_and_run(
    phoenix: Phoenix, make_proxy: MakeProxy, fake: FakeUpstream, bundle: str
) -> None:
    run_id, thread_id = new_id(), new_id()  # this test's spans, among any others in Phoenix
    proxy = make_proxy(otlp_endpoint=phoenix.url, otlp_content=True, run_id=run_id)
    sdk = client(proxy, fake, bundle)
    thread = {"llmreel-session": thread_id}
    messages: list[Any] = [{"role": "user", "content": "weather in Paris? my key is "
                            "sk-proj-AAAABBBBCCCCDDDDEEEEFFFFGGGGHHHH"}]  # fmt: skip
    first = sdk.chat.completions.create(
        model="gpt-4o-mini", messages=messages, extra_headers=thread
    )
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "and tomorrow?"}]  # fmt: skip
    sdk.chat.completions.create(model="gpt-4o-mini", messages=messages, extra_headers=thread)
    sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    sdk.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )  # a hit
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}],
                                    extra_headers={"x-fake-status": "429"})  # fmt: skip
    proxy.stop()  # sends the thread's and the run's root spans, and flushes

    def ours() -> list[dict[str, Any]]:
        return [s for s in phoenix.spans()
                if attr(s, "llmreel.run") == run_id
                or attr(s, "llmreel.session") == thread_id]  # fmt: skip

    every = wait_until(lambda: (found := ours()) and len(found) >= 7 and found,
                       "7 spans in phoenix", timeout=120)  # fmt: skip
    calls = [s for s in every if s["name"] == "chat gpt-4o-mini"]
    roots = {s["name"]: s for s in every if s["name"].startswith("llmreel ")}
    assert len(calls) == 5 and set(roots) == {"llmreel session", "llmreel run"}, [
        s["name"] for s in every
    ]

    in_thread = [s for s in calls if attr(s, "session.id") == thread_id]
    in_run = [s for s in calls if attr(s, "session.id") is None]
    assert len(in_thread) == 2 and len(in_run) == 3
    session_root, run_root = roots["llmreel session"], roots["llmreel run"]
    # A thread is one trace under its root span; the rest of the run is another.
    assert {s["context"]["trace_id"] for s in in_thread} == {session_root["context"]["trace_id"]}
    assert {s["parent_id"] for s in in_thread} == {session_root["context"]["span_id"]}
    assert {s["context"]["trace_id"] for s in in_run} == {run_root["context"]["trace_id"]}
    assert {s["parent_id"] for s in in_run} == {run_root["context"]["span_id"]}
    assert session_root["parent_id"] is None and run_root["parent_id"] is None
    assert attr(run_root, "llmreel.exchanges") == 3
    assert run_root["span_kind"] == "CHAIN"

    for span in calls:
        assert attr(span, "gen_ai.operation.name") == "chat"
        # The fake upstream is an unknown host that speaks OpenAI's wire format.
        assert attr(span, "gen_ai.provider.name") == "openai-compatible"
        assert attr(span, "gen_ai.request.model") == "gpt-4o-mini"
        assert attr(span, "server.address") == "127.0.0.1"
        assert attr(span, "llmreel.namespace") == "default"
        assert attr(span, "llmreel.run") == run_id
        assert span["span_kind"] == "LLM"  # Phoenix shows them as LLM calls
    ok = [s for s in calls if attr(s, "http.response.status_code") == 200]
    assert sorted(attr(s, "llmreel.cache") for s in ok) == ["hit", "miss", "miss", "miss"]
    for span in ok:
        assert attr(span, "gen_ai.usage.input_tokens") > 0
        assert attr(span, "gen_ai.usage.output_tokens") > 0
        assert list(attr(span, "gen_ai.response.finish_reasons")) == ["stop"]
        assert attr(span, "gen_ai.response.model")
        assert span["status_code"] != "ERROR"
    (failed,) = [s for s in calls if attr(s, "http.response.status_code") == 429]
    assert failed["status_code"] == "ERROR" and attr(failed, "error.type") == "429"

    # Content went out (asked for with --otlp-content), masked like the log.
    first_span = min(in_thread, key=lambda s: s["start_time"])
    prompt = str(attr(first_span, "gen_ai.input.messages"))
    assert "weather in Paris?" in prompt
    assert "AAAABBBBCCCC" not in prompt and "[redacted " in prompt
    assert "Echo:" in str(attr(first_span, "gen_ai.output.messages"))
