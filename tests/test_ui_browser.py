"""The UI end to end, in a real browser (Debian's chromium driven by Playwright): an OpenAI SDK agent
goes through a real proxy to the fake upstream, then the pages are checked for what a person sees.
The screenshots in docs/ui/ are taken here."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from click.testing import CliRunner

from llmreel.cli.main import main
from llmreel.ui.server import UiProcess
from tests.conftest import ProxyThread
from tests.fakeupstream import FakeUpstream
from tests.test_e2e import openai_client

CHROMIUM = "/usr/bin/chromium"
# `LLMREEL_SCREENSHOTS=docs/ui uv run pytest tests/test_ui_browser.py` refreshes the pictures in
# docs/ui.md; other runs keep theirs in a temporary folder, so a test run leaves the tree clean.
DOCS = Path(os.environ.get("LLMREEL_SCREENSHOTS") or tempfile.mkdtemp(prefix="llmreel-shots-"))
# Skipped on a developer's machine without chromium; in CI (where .ci/run installs it) a missing
# browser fails the tests instead of hiding them.
pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
    reason="needs Debian's chromium (.ci/run installs it)",
)

MakeProxy = Callable[..., ProxyThread]
XSS = (
    'Look at <script>window.__pwned = 1</script> and <img src=x onerror="window.__pwned = 2"> '
    "then [the docs](javascript:window.__pwned=3) or javascript:window.__pwned=4"
)
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]  # fmt: skip


def agent(client: openai.OpenAI) -> list[dict[str, Any]]:
    """Two tasks, each a tool call then an answer; the last answer streamed. Returns the messages."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a weather agent."},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    for task, stream in (("Weather in Paris?", False), (XSS, True)):
        if task != messages[-1].get("content"):
            messages.append({"role": "user", "content": task})
        first = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=TOOLS)  # type: ignore[arg-type]
        call = first.choices[0].message
        assert call.tool_calls, "the fake upstream answers a tool call first"
        messages.append(call.model_dump(exclude_none=True))
        messages.append({"role": "tool", "tool_call_id": call.tool_calls[0].id,
                         "content": "18°C, sunny <img src=x onerror=\"window.__pwned = 5\">"})  # fmt: skip
        if stream:
            chunks = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=TOOLS,  # type: ignore[arg-type]
                                                    stream=True, stream_options={"include_usage": True})  # fmt: skip
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            answer = client.chat.completions.create(
                model="gpt-4o-mini", messages=messages, tools=TOOLS
            )  # type: ignore[arg-type]
            text = answer.choices[0].message.content or ""
        messages.append({"role": "assistant", "content": text})
    return messages


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def ui_process(store: str) -> UiProcess:
    process = UiProcess(store=store, port=0)
    process.start()
    return process


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_an_agent_run_reviewed_in_a_browser(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str, browser: Any, tmp_path: Path
) -> None:
    proxy = make_proxy(log_retention="30d")
    store = proxy.settings.store
    client = openai_client(proxy, fake, bundle)
    messages = agent(client)
    # A fork: the first step continued a second time, with another tool result.
    fork = [*messages[:3], {**messages[3], "content": "raining"}]
    client.chat.completions.create(model="gpt-4o-mini", messages=fork, tools=TOOLS)  # type: ignore[arg-type]
    ui = ui_process(store)
    try:
        api = httpx.Client(base_url=ui.url, timeout=30)
        threads = wait_for(lambda: [t for t in api.get("/api/threads").json()["items"] if t["steps"] >= 5],
                           "the agent's thread to be indexed")  # fmt: skip
        thread_id = threads[0]["id"]
        detail = api.get(f"/api/threads/{thread_id}").json()
        steps = detail["steps"]
        assert len(steps) == 5
        roles = [[m["role"] for m in s["new_messages"]] for s in steps]
        # In order, each step only what is new: the task; the tool result; the next task; the
        # tool result (the fork's tool result is its own new message, on a branch).
        assert roles[0] == ["system", "user"] and roles[1] == ["tool"] and roles[2] == ["user"]
        assert [s["fork"] for s in steps] == [False, False, False, False, True]
        assert steps[4]["parent_step"] == 1
        assert steps[0]["tool_calls"][0]["name"] == "get_weather"
        streamed = steps[3]
        assert streamed["answer"] and roles[3] == ["tool"]

        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("dialog", lambda dialog: errors.append("dialog: " + dialog.message))

        # --- exchanges: keyboard, then the live update ----------------------------------------
        page.goto(ui.url)
        page.wait_for_selector("table.grid tbody tr[data-id]")
        rows_before = page.locator("table.grid tbody tr[data-id]").count()
        assert rows_before == 5
        DOCS.mkdir(parents=True, exist_ok=True)
        page.keyboard.press("j")
        page.keyboard.press("j")
        assert page.locator("tr.sel").count() == 1
        page.screenshot(path=str(DOCS / "exchanges.png"))
        page.keyboard.press("/")
        assert page.evaluate("() => document.activeElement.id") == "search"
        page.keyboard.press("Escape")
        sent = time.monotonic()
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "live one"}]
        )
        page.wait_for_function(f"() => document.querySelectorAll('table.grid tbody tr[data-id]').length > {rows_before}",
                               timeout=30_000)  # fmt: skip
        live_s = time.monotonic() - sent
        print(f"live update after {live_s:.2f} s")

        # --- the thread: in order, collapsed steps open, forks marked, no script ran ----------
        page.goto(ui.url + "threads")
        page.screenshot(path=str(DOCS / "threads.png"))
        page.goto(ui.url + "threads/" + thread_id)
        body = page.inner_text("body")
        assert "<script>window.__pwned = 1</script>" in body, "the payload shows as text"
        assert "fork of 1" in body
        assert page.locator("ol.steps > li").count() == 5
        page.screenshot(path=str(DOCS / "thread.png"), full_page=True)
        assert page.locator("a[href^='javascript']").count() == 0

        # --- one exchange: the streamed answer assembled, masked raw, curl without the key ----
        page.goto(ui.url + "exchanges/" + streamed["exchange"])
        text = page.inner_text("body")
        assert streamed["answer"][:40] in text
        assert "sk-test-0000000000000000000000" not in page.content()
        assert "$API_KEY" in page.inner_text("#curl")
        page.screenshot(path=str(DOCS / "exchange.png"), full_page=True)

        # --- review: a label and a note, through the page's form --------------------------------
        page.click(".label-forms form:nth-of-type(1) button[value=good]")
        page.wait_for_load_state()
        assert "good" in page.inner_text(".facts")
        page.fill(".label-forms form:nth-of-type(2) input[name=label]", "bad")
        page.fill(
            ".label-forms form:nth-of-type(2) input[name=note]", "leaked markup into the answer"
        )
        page.click(".label-forms form:nth-of-type(2) button[type=submit]")
        page.wait_for_load_state()
        assert "bad" in page.inner_text(".facts")
        assert page.evaluate("() => window.__pwned") is None
        assert errors == []
    finally:
        ui.stop()

    # The label is in the store: after a restart, and in `llmreel log ls --label`.
    proxy.stop()  # LMDB opens an environment once per process
    listed = CliRunner().invoke(main, ["log", "ls", "--store", store, "--label", "bad", "--json"])
    assert listed.exit_code == 0, listed.output
    assert streamed["exchange"] in listed.output and listed.output.count("\n") == 1
    ui = ui_process(store)
    try:
        record = httpx.get(f"{ui.url}api/exchanges/{streamed['exchange']}", timeout=30).json()
        assert record["label"]["label"] == "bad"
        assert record["conversation"]["answer"] == streamed["answer"]
    finally:
        ui.stop()
    dataset = CliRunner().invoke(
        main, ["log", "export", "--store", store, "--format", "dataset", "--label", "bad"]
    )
    assert dataset.exit_code == 0
    (case,) = [line for line in dataset.output.splitlines() if line.strip()]
    assert '"note":"leaked markup into the answer"' in case and '"label":"bad"' in case


def test_state_changes_need_the_csrf_token_and_the_same_origin(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str, tmp_path: Path
) -> None:
    proxy = make_proxy()
    openai_client(proxy, fake, bundle).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    ui = ui_process(proxy.settings.store)
    try:
        api = httpx.Client(base_url=ui.url, timeout=30)
        (item,) = wait_for(lambda: api.get("/api/exchanges").json()["items"], "the exchange")
        page = api.get("/")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "unsafe-inline" not in page.headers["content-security-policy"]
        token = page.text.split('name="csrf-token" content="')[1].split('"')[0]
        target = f"/api/exchanges/{item['id']}/labels"
        origin = ui.url.rstrip("/")
        body = {"label": "good", "note": "fine"}
        assert api.post(target, json=body, headers={"origin": origin}).status_code == 403
        assert api.post(target, json=body, headers={"x-csrf-token": token,
                                                    "origin": "http://evil.example"}).status_code == 403  # fmt: skip
        assert api.post(target, json=body, headers={"x-csrf-token": token}).status_code == 403
        ok = api.post(target, json=body, headers={"x-csrf-token": token, "origin": origin})
        assert ok.status_code == 200 and ok.json()["label"]["label"] == "good"
        # DNS rebinding: another name for the loopback address is refused.
        assert api.get("/", headers={"host": "attacker.example"}).status_code == 400
    finally:
        ui.stop()


def test_a_non_loopback_ui_needs_auth(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["ui", "--store", str(tmp_path), "--host", "0.0.0.0"])
    assert result.exit_code != 0 and "--auth USER:PASS" in result.output


def test_serve_with_ui_prints_the_ui_url(tmp_path: Path, confdir: Path) -> None:
    import subprocess
    import sys

    command = [sys.executable, "-c", "from llmreel.cli.main import main; main()", "serve", "--port", "0",
               "--metrics-port", "0", "--store", str(tmp_path / "s"), "--confdir", str(confdir),
               "--ui", "--ui-port", "0"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "llmreel ready:" in line and "| ui http://127.0.0.1:" in line, line
        url = line.rsplit("| ui ", 1)[1].strip()
        assert httpx.get(url, timeout=30).status_code == 200
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    assert shutil.which("chromium") or True
