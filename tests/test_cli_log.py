"""`llmreel log` as a user runs it: tables, conversations, tail across processes, HAR, secrets."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

from llmreel.cli.log import log
from llmreel.core.exchange import Exchange
from llmreel.log.exchangelog import ExchangeLog
from llmreel.log.packing import unpack_record
from llmreel.storage.lmdbstore import LmdbStore
from tests.test_exchangelog import (
    KINDS,
    REQUIRED,
    SECRETS,
    SYSTEM_PROMPT,
    assert_no_secrets,
    fixture,
    make_exchange,
)

ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[")
# Nothing in these tests may depend on the terminal the suite runs in.
PLAIN_ENV: dict[str, str | None] = {"FORCE_COLOR": None, "TTY_COMPATIBLE": None, "NO_COLOR": None,
                                    "COLUMNS": "200", "LLMREEL_STORE": None}  # fmt: skip
OUTPUTS: list[bytes] = []  # every CLI output of this module, for the secrets audit


def run(*args: str, env: dict[str, str | None] | None = None, ok: bool = True) -> Result:
    result = CliRunner().invoke(log, list(args), env={**PLAIN_ENV, **(env or {})})
    OUTPUTS.extend([result.stdout_bytes, result.stderr_bytes or b""])
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    return result


def write(store_dir: Path, exchanges: list[Exchange]) -> None:
    with LmdbStore(store_dir) as store:
        exchange_log = ExchangeLog(store, retention_s=None)  # no automatic prune: tests prune
        for ex in exchanges:
            exchange_log.append(ex)
        exchange_log.flush()


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Exchange]]]:
    """A store after a session of agent traffic: every provider, hits, errors, an old call."""
    store_dir = tmp_path_factory.mktemp("log") / "store"
    now = time.time()
    exchanges = {kind: make_exchange(kind, started=now - 300 + i) for i, kind in enumerate(KINDS)}
    exchanges["hit"] = make_exchange(
        "openai-chat", started=now - 200, cache="hit", duration_s=0.004
    )
    exchanges["old"] = make_exchange("anthropic", started=now - 3 * 86400)
    exchanges["cut"] = make_exchange(
        "openai-chat-stream", started=now - 100, status=None, error="upstream closed the stream",
        error_type="stream_cut", response_headers=[],
        response_body=fixture("openai-chat-stream.sse")[:700], summary=None, usage=None,
        cost_usd=None, recorded=False,
    )  # fmt: skip
    write(store_dir, list(exchanges.values()))
    yield str(store_dir), exchanges
    audit_secrets(store_dir)


def audit_secrets(store_dir: Path) -> None:
    """Search every byte written (store files, decoded records, CLI output) for the keys."""
    for file in store_dir.iterdir():
        assert_no_secrets(file.read_bytes(), str(file))
    with LmdbStore(store_dir, create=False) as store:
        for _, value in store.iter_raw(b"log"):
            assert_no_secrets(orjson.dumps(unpack_record(value)), "a stored record")
    for output in OUTPUTS:
        assert_no_secrets(output, "CLI output")


def lines(result: Result) -> list[str]:
    return result.stdout.splitlines()


# --- ls ---------------------------------------------------------------------------------------


def test_ls_is_a_plain_table_newest_first(session: tuple[str, dict[str, Exchange]]) -> None:
    store, exchanges = session
    out = lines(run("ls", "--store", store))
    assert out[0].split() == ["time", "id", "provider", "model", "cache", "status", "in", "out",
                              "cost", "duration"]  # fmt: skip
    ids = [line.split()[2] for line in out[1:]]
    by_start = sorted(exchanges.values(), key=lambda ex: ex.id, reverse=True)
    assert ids == [ex.id for ex in by_start]
    cut = next(line for line in out if exchanges["cut"].id in line)
    assert "stream_cut" in cut
    claude = next(line for line in out if exchanges["anthropic"].id in line)
    assert claude.split()[3:9] == [
        "anthropic",
        "claude-3-5-haiku-20241022",
        "miss",
        "200",
        "568",
        "58",
    ]


def test_ls_json_has_the_documented_fields(session: tuple[str, dict[str, Exchange]]) -> None:
    store, exchanges = session
    records = [json.loads(line) for line in lines(run("ls", "--store", store, "--json"))]
    assert len(records) == len(exchanges)
    for record in records:
        assert set(REQUIRED) <= set(record)
    gemini = next(r for r in records if r["id"] == exchanges["gemini-stream"].id)
    assert gemini["provider"] == "gemini" and gemini["model"] == "gemini-2.5-flash"
    assert (gemini["input_tokens"], gemini["output_tokens"]) == (18, 115)


def ids_of(*args: str, store: str) -> set[str]:
    return {json.loads(line)["id"] for line in lines(run("ls", "--store", store, "--json", *args))}


def test_ls_filters(session: tuple[str, dict[str, Exchange]]) -> None:
    store, ex = session

    def ids(*names: str) -> set[str]:
        return {ex[n].id for n in names}

    assert ids_of("--provider", "anthropic", store=store) == ids(
        "anthropic-tools-stream", "anthropic", "old"
    )
    assert ids_of("--since", "1d", "--provider", "anthropic", store=store) == ids(
        "anthropic-tools-stream", "anthropic")  # fmt: skip
    assert ids_of("--until", "1d", store=store) == ids("old")
    assert ids_of("--cache", "hit", store=store) == ids("hit")
    assert ids_of("--status", "4xx", store=store) == ids("error")
    assert ids_of("--status", "error", store=store) == ids("error", "cut")
    assert ids_of("--model", "gemini*", store=store) == ids("gemini-stream")
    assert ids_of("--model", "text-embedding-ada-002,gpt-4.1-nano", store=store) == ids(
        "embeddings", "openai-responses-stream")  # fmt: skip
    assert ids_of("--namespace", "nope", store=store) == set()
    assert len(ids_of("--limit", "2", store=store)) == 2


def test_ls_grep_finds_prompts_and_streamed_answers(
    session: tuple[str, dict[str, Exchange]],
) -> None:
    store, ex = session
    assert ids_of("--grep", "LONDON", store=store) == {ex["openai-chat-stream"].id}  # assembled
    assert ids_of("--grep", "capital of spain", store=store) == {
        ex["openai-responses-tools-stream"].id
    }
    assert ids_of("--grep", "weather in rome", store=store) == {ex["gemini-stream"].id}
    assert ids_of("--grep", "Incorrect API key", store=store) == {ex["error"].id}  # error bodies
    assert ids_of("--grep", "18°c, SUNNY", store=store) == {ex["anthropic-tools-stream"].id}
    assert ids_of("--grep", 'weather in "', store=store) == set()  # JSON syntax never matches
    assert ids_of("--grep", "upstream closed", store=store) == {ex["cut"].id}  # the error field
    out = run("ls", "--store", store, "--grep", "no such words anywhere")
    assert out.stdout == "" and "widen the filters" in out.stderr


def test_bad_filters_and_missing_stores_say_what_to_do(tmp_path: Path) -> None:
    result = run("ls", "--store", str(tmp_path / "nowhere"), ok=False)
    assert result.exit_code == 1 and "--store" in result.stderr and "LLMREEL_STORE" in result.stderr
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    result = run("ls", "--store", str(export_dir), ok=False)
    assert result.exit_code == 1 and "no data.mdb" in result.stderr
    assert list(export_dir.iterdir()) == []  # nothing created there
    result = run("ls", "--store", str(tmp_path), "--since", "last tuesday", ok=False)
    assert result.exit_code == 2 and "10m" in result.stderr
    result = run("ls", "--store", str(tmp_path), "--status", "teapot", ok=False)
    assert result.exit_code == 2 and "4xx" in result.stderr


# --- show -------------------------------------------------------------------------------------


def show(store: str, ex: Exchange, *args: str) -> str:
    return run("show", "--store", store, ex.id, *args).stdout


def test_show_reads_each_provider_as_a_conversation(
    session: tuple[str, dict[str, Exchange]],
) -> None:
    store, ex = session
    chat = show(store, ex["openai-chat-tools-stream"])
    assert re.search(r"── system\n  You are a terse geography tutor\.\n", chat)
    assert "── user\n  Capital of the UK? Use the tool." in chat
    assert '→ call get_capital({"country":"France"})  [call_prev1]' in chat
    assert "── tool\n  ← result [call_prev1]\n    Paris" in chat
    assert "── response" in chat and '→ call get_capital({"country":"UK"})' in chat
    assert "usage 53 in, 15 out" in chat and "cost $0.00042" in chat and "finish tool_calls" in chat

    streamed = show(store, ex["openai-chat-stream"])
    assert "── response  gpt-4o-mini-2024-07-18\n  The capital of the UK is London." in streamed
    assert "first chunk 200ms" in streamed and "cache miss" in streamed

    responses = show(store, ex["openai-responses-tools-stream"])
    assert "── system\n  " + SYSTEM_PROMPT in responses
    assert '→ call get_capital({"country":"Spain"})  [call_es]' in responses
    assert "← result [call_es]\n    Madrid" in responses

    claude = show(store, ex["anthropic-tools-stream"])
    assert "── system\n  " + SYSTEM_PROMPT in claude
    assert "thinking: The user wants Paris weather." in claude
    assert "← result [toolu_prev]\n    18°C, sunny" in claude
    assert "  Certainly! I can help you with that information." in claude
    assert '→ call get_time({"timezone": "America/Los_Angeles"})' in claude

    gemini = show(store, ex["gemini-stream"])
    assert '── model\n  → call get_weather({"city":"Rome"})' in gemini
    assert '← result get_weather\n    {"temp_c":21}' in gemini
    assert "── response  gemini-2.5-flash\n  1\n  2\n  3" in gemini
    assert "usage 18 in, 115 out (reasoning 35)" in gemini

    embeddings = show(store, ex["embeddings"])
    assert "── input\n  Tell me a joke." in embeddings and "1 embedding" in embeddings

    hit = show(store, ex["hit"])
    assert "cache hit" in hit and "(saved: served from the cache)" in hit

    cut = show(store, ex["cut"])
    assert "status stream_cut" in cut and "error upstream closed the stream" in cut


def test_show_raw_json_and_prefixes(session: tuple[str, dict[str, Exchange]]) -> None:
    store, ex = session
    raw = show(store, ex["gemini-stream"], "--raw")
    assert raw.startswith("POST https://generativelanguage.googleapis.com/v1beta/models/")
    assert "x-goog-api-key: [redacted " in raw and "key=%5Bredacted" in raw
    assert "HTTP/1.1 200\ncontent-type: text/event-stream\n" in raw
    assert fixture("gemini-stream.sse").decode().replace("\r\n", "\n").strip() in raw.replace(
        "\r\n", "\n"
    )
    record = json.loads(show(store, ex["anthropic"], "--json"))
    assert record["id"] == ex["anthropic"].id and record["request_body"]["system"] == SYSTEM_PROMPT
    by_prefix = run("show", "--store", store, ex["anthropic"].id[:-4].lower(), "--json")
    assert json.loads(by_prefix.stdout)["id"] == ex["anthropic"].id


def test_show_unknown_id_suggests_ls(session: tuple[str, dict[str, Exchange]]) -> None:
    store, _ = session
    result = run("show", "--store", store, "01ZZZZZZZZ", ok=False)
    assert result.exit_code == 1 and "llmreel log ls" in result.stderr


# --- terminals and pipes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", [("ls",), ("stats",), ("show", "KEY"), ("show", "KEY", "--raw")]
)
def test_colour_on_a_terminal_plain_text_in_a_pipe(
    session: tuple[str, dict[str, Exchange]], command: tuple[str, ...]
) -> None:
    store, ex = session
    args = [ex["anthropic-tools-stream"].id if a == "KEY" else a for a in command]
    piped = run(*args, "--store", store)
    assert piped.stdout and not ANSI.search(piped.stdout)
    terminal = run(*args, "--store", store, env={"FORCE_COLOR": "1"})
    assert ANSI.search(terminal.stdout)
    assert re.sub(r"\x1b\[[0-9;]*m", "", terminal.stdout).split() != []


def test_every_command_is_plain_when_piped(session: tuple[str, dict[str, Exchange]]) -> None:
    store, ex = session
    for args in (["ls", "--json"], ["stats", "--json"], ["export"], ["export", "--format", "har"],
                 ["show", ex["error"].id, "--json"], ["tail", "--duration", "0"]):  # fmt: skip
        out = run(*args, "--store", store).stdout
        assert out and not ANSI.search(out), args


# --- export -----------------------------------------------------------------------------------

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)$")


def check_har(doc: Any) -> None:
    """HAR 1.2 structure (http://www.softwareishard.com/blog/har-12-spec/): what viewers need."""

    def name_values(items: Any, where: str) -> None:
        assert isinstance(items, list), where
        for item in items:
            assert isinstance(item.get("name"), str) and isinstance(item.get("value"), str), where

    log_obj = doc["log"]
    assert log_obj["version"] == "1.2"
    assert isinstance(log_obj["creator"]["name"], str) and isinstance(
        log_obj["creator"]["version"], str
    )
    assert isinstance(log_obj["entries"], list)
    for entry in log_obj["entries"]:
        assert ISO_MS.match(entry["startedDateTime"]), entry["startedDateTime"]
        assert isinstance(entry["time"], int | float) and entry["time"] >= 0
        req, resp = entry["request"], entry["response"]
        for key, kind in (("method", str), ("url", str), ("httpVersion", str), ("cookies", list),
                          ("headersSize", int), ("bodySize", int)):  # fmt: skip
            assert isinstance(req[key], kind), key
        name_values(req["headers"], "request.headers")
        name_values(req["queryString"], "request.queryString")
        if "postData" in req:
            assert isinstance(req["postData"]["mimeType"], str)
            assert isinstance(req["postData"]["text"], str)
        for key, kind in (("status", int), ("statusText", str), ("httpVersion", str),
                          ("cookies", list), ("redirectURL", str), ("headersSize", int),
                          ("bodySize", int)):  # fmt: skip
            assert isinstance(resp[key], kind), key
        name_values(resp["headers"], "response.headers")
        content = resp["content"]
        assert isinstance(content["size"], int) and isinstance(content["mimeType"], str)
        assert isinstance(content.get("text", ""), str)
        assert isinstance(entry["cache"], dict)
        timings = entry["timings"]
        for key in ("send", "wait", "receive"):
            assert isinstance(timings[key], int | float) and timings[key] >= 0, key
        for key in ("blocked", "dns", "connect", "ssl"):
            assert timings.get(key, -1) == -1 or timings[key] >= 0
        total = sum(v for v in timings.values() if v != -1)
        assert total == pytest.approx(entry["time"], abs=0.01)


def test_export_har(session: tuple[str, dict[str, Exchange]], tmp_path: Path) -> None:
    store, ex = session
    out = tmp_path / "session.har"
    result = run("export", "--store", store, "--format", "har", "-o", str(out))
    assert f"wrote {len(ex)} exchanges" in result.stderr and "Import HAR" in result.stderr
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    data = out.read_bytes()
    OUTPUTS.append(data)
    doc = json.loads(data)
    check_har(doc)
    entries = {e["_llmreel"]["id"]: e for e in doc["log"]["entries"]}
    assert list(entries) == sorted(entries)  # oldest first
    stream = entries[ex["anthropic-tools-stream"].id]
    assert stream["response"]["content"]["text"] == fixture("anthropic-tools-stream.sse").decode()
    assert stream["response"]["content"]["mimeType"].startswith("text/event-stream")
    assert json.loads(stream["request"]["postData"]["text"])["system"][0]["text"] == SYSTEM_PROMPT
    assert stream["timings"]["wait"] == 200 and stream["time"] == 800
    gemini = entries[ex["gemini-stream"].id]
    assert {"name": "alt", "value": "sse"} in gemini["request"]["queryString"]
    cut = entries[ex["cut"].id]
    assert cut["response"]["status"] == 0 and cut["_error"] == "upstream closed the stream"
    assert entries[ex["error"].id]["response"]["statusText"] == "Unauthorized"


def test_export_jsonl_with_filters(session: tuple[str, dict[str, Exchange]]) -> None:
    store, ex = session
    out = lines(run("export", "--store", store, "--provider", "gemini"))
    assert len(out) == 1
    record = json.loads(out[0])
    assert record["id"] == ex["gemini-stream"].id and record["events"][0]["data"]["candidates"]
    lean = json.loads(
        lines(run("export", "--store", store, "--provider", "gemini", "--no-bodies"))[0]
    )
    assert "request_body" not in lean and "events" not in lean and lean["request_headers"]


# --- stats and prune --------------------------------------------------------------------------


def test_stats(session: tuple[str, dict[str, Exchange]]) -> None:
    store, exchanges = session
    doc = json.loads(run("stats", "--store", store, "--json").stdout)
    total = doc["total"]
    assert total["requests"] == len(exchanges) == 13 and total["hits"] == 1 and total["errors"] == 2
    mini = next(r for r in doc["rows"] if r["model"] == "gpt-4o-mini")
    # openai-chat, openai-chat-stream, openai-chat-tools-stream, cut (miss) + hit: 5 requests
    assert mini["requests"] == 5 and mini["hits"] == 1 and mini["hit_ratio"] == pytest.approx(1 / 5)
    assert mini["saved_usd"] == pytest.approx(0.00042)
    assert mini["input_tokens"] == 1149 + 78 + 53 and mini["p50_s"] == 0.8
    table = lines(run("stats", "--store", store))
    assert table[0].split()[:3] == ["provider", "model", "requests"]
    assert table[-1].split()[:2] == ["total", "13"]


def test_prune(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    now = time.time()
    write(store_dir, [make_exchange(started=now - d * 86400) for d in (40, 31, 10, 0)])
    result = run("prune", "--store", str(store_dir))
    assert "removed 2 exchanges older than 30d; 2 left" in result.stdout
    assert "removed 1 " in run("prune", "--store", str(store_dir), "--older-than", "7d").stdout
    assert run("prune", "--store", str(store_dir), "--older-than", "soon", ok=False).exit_code == 2


# --- tail -------------------------------------------------------------------------------------

WRITER = """
import sys, time
from llmreel.log.exchangelog import ExchangeLog
from llmreel.storage.lmdbstore import LmdbStore
from tests.test_exchangelog import make_exchange

store = LmdbStore(sys.argv[1])
exchange_log = ExchangeLog(store)
for kind in ("openai-chat-stream", "anthropic", "gemini-stream"):
    ex = make_exchange(kind, started=time.time(), duration_s=0.01)
    exchange_log.append(ex)
    exchange_log.flush()
    print(ex.id, flush=True)
    time.sleep(0.2)
store.close()
"""


def test_tail_follows_what_another_process_writes(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    write(store_dir, [make_exchange("embeddings")])
    tail = subprocess.Popen(
        [sys.executable, "-c", "from llmreel.cli.log import log; log()", "tail", "--store",
         str(store_dir), "--count", "3", "--duration", "60", "--interval", "0.1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        assert tail.stdout is not None
        # The entry already there comes first: from then on, tail is following.
        out = [tail.stdout.readline()]
        writer = subprocess.run([sys.executable, "-c", WRITER, str(store_dir)], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        rest, errors = tail.communicate(timeout=60)
    finally:
        tail.kill()
    assert writer.returncode == 0, writer.stderr
    assert tail.returncode == 0, errors
    OUTPUTS.append("".join(out + [rest]).encode())
    ids = writer.stdout.split()
    out = [line for line in out + rest.splitlines() if line.strip()]
    assert len(ids) == 3
    shown = [line.split()[2] for line in out]
    assert shown[-3:] == ids  # in order, once each, after the one already there
    assert len(shown) == len(set(shown)) == 4
    assert "gemini-2.5-flash" in out[-1]


def test_tail_stops_quietly_on_ctrl_c(session: tuple[str, dict[str, Exchange]]) -> None:
    store, _ = session
    proc = subprocess.Popen(
        [sys.executable, "-c", "from llmreel.cli.log import log; log()", "tail", "--store", store,
         "-n", "1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.strip()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err
    OUTPUTS.append(first.encode())


def test_no_secret_anywhere(session: tuple[str, dict[str, Exchange]], tmp_path: Path) -> None:
    """Each test above fed OUTPUTS; this one adds the JSONL sink and checks the store now."""
    from llmreel.log.jsonl import JsonlSink

    store, exchanges = session
    sink_path = tmp_path / "log.jsonl"
    sink = JsonlSink(str(sink_path), bodies=True)
    for ex in exchanges.values():
        sink.append(ex)
    sink.close()
    assert_no_secrets(sink_path.read_bytes(), "the JSONL sink")
    for ex in exchanges.values():
        for args in (["show", ex.id], ["show", ex.id, "--raw"], ["show", ex.id, "--json"]):
            run(*args, "--store", store)
    for output in OUTPUTS:
        assert_no_secrets(output, "CLI output")
    audit_secrets(Path(store))
    assert all(secret[:12] for secret in SECRETS)


# --- through a real proxy ---------------------------------------------------------------------


def cli_process(*args: str) -> str:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "llmreel"), "log", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    OUTPUTS.extend([done.stdout.encode(), done.stderr.encode()])
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_real_proxy_session_is_logged_readable_and_secret_free(
    make_proxy: Any, fake: Any, bundle: str, tmp_path: Path
) -> None:
    """Agent traffic through a real proxy: find it with --grep, read it, export it, no keys."""
    import ssl

    import anthropic
    import httpx
    import openai

    from tests.test_exchangelog import ANTHROPIC_KEY, GOOGLE_KEY, OPENAI_KEY

    proxy = make_proxy(store=str(tmp_path / "store"))
    exchange_log = proxy.recorder.exchange_log  # the proxy logs every exchange by itself
    assert isinstance(exchange_log, ExchangeLog)
    verify = ssl.create_default_context(cafile=bundle)
    oai = openai.OpenAI(base_url=f"{fake.url}/v1", api_key=OPENAI_KEY,
                        http_client=openai.DefaultHttpxClient(proxy=proxy.url, verify=verify))  # fmt: skip
    for _ in range(2):  # a miss, then a hit
        stream = oai.chat.completions.create(
            model="gpt-4o-mini", stream=True, stream_options={"include_usage": True},
            messages=[{"role": "system", "content": SYSTEM_PROMPT},
                      {"role": "user", "content": "Where is the refund policy?"}],
        )  # fmt: skip
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    claude = anthropic.Anthropic(base_url=fake.url, api_key=ANTHROPIC_KEY,
                                 http_client=anthropic.DefaultHttpxClient(proxy=proxy.url, verify=verify))  # fmt: skip
    claude.messages.create(model="claude-sonnet-4-6", max_tokens=50,
                           messages=[{"role": "user", "content": "Say hello to the reel"}])  # fmt: skip
    with httpx.Client(proxy=proxy.url, verify=verify, timeout=30) as client:
        client.post(
            f"{fake.url}/v1beta/models/gemini-2.5-flash:generateContent?key={GOOGLE_KEY}",
            headers={"x-goog-api-key": GOOGLE_KEY},
            json={"contents": [{"role": "user", "parts": [{"text": "Hello Gemini"}]}]},
        )
    deadline = time.monotonic() + 20
    while exchange_log.count() < 4 and time.monotonic() < deadline:
        exchange_log.flush()
        time.sleep(0.05)
    store = str(tmp_path / "store")
    # Another process reads while the proxy runs (LMDB allows one environment per process).
    listed = cli_process("ls", "--store", store, "--json", "--grep", "refund")
    found = [json.loads(line) for line in listed.splitlines()]
    assert [r["cache"] for r in found] == ["hit", "miss"]
    shown = cli_process("show", "--store", store, found[1]["id"])
    assert "Where is the refund policy?" in shown and SYSTEM_PROMPT in shown
    assert f"── response  {found[1]['response_model']}\n  {streamed}" in shown
    assert "(saved: served from the cache)" in cli_process("show", "--store", store, found[0]["id"])
    har = tmp_path / "session.har"
    cli_process("export", "--store", store, "--format", "har", "-o", str(har))
    doc = json.loads(har.read_bytes())
    check_har(doc)
    assert len(doc["log"]["entries"]) == 4
    OUTPUTS.append(har.read_bytes())
    proxy.stop()
    audit_secrets(Path(store))
