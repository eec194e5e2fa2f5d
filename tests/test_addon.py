"""The addon's decisions, driven with mitmproxy's own test helpers (no sockets)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from mitmproxy import connection
from mitmproxy.proxy import server_hooks
from mitmproxy.test import taddons, tflow, tutils
from prometheus_client import CollectorRegistry

from llmreel.addons.recorder import Recorder
from tests.leaks import leaks

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}
CHAT_RESPONSE = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
}


@pytest.fixture
async def recorder(tmp_path: Path) -> AsyncIterator[Recorder]:
    addon = Recorder(registry=CollectorRegistry())
    with taddons.context(addon) as tctx:
        tctx.configure(addon, llmreel_store=str(tmp_path / "store"))
        addon.tctx = tctx  # type: ignore[attr-defined]
        yield addon
    addon.done()


def configure(recorder: Recorder, **options: Any) -> None:
    recorder.tctx.configure(recorder, **options)  # type: ignore[attr-defined]


def chat_flow(body: Any = CHAT, headers: dict[str, str] | None = None, host: str = "api.openai.com",
              path: str = "/v1/chat/completions") -> Any:  # fmt: skip
    req = tutils.treq(
        method=b"POST", scheme=b"https", host=host, port=443, path=path.encode(),
        headers=((b"content-type", b"application/json"),), content=json.dumps(body).encode(),
    )  # fmt: skip
    for name, value in (headers or {}).items():
        req.headers[name] = value
    return tflow.tflow(req=req)


def upstream_response(flow: Any, body: Any = CHAT_RESPONSE, status: int = 200,
                      content_type: str = "application/json") -> None:  # fmt: skip
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    flow.response = tutils.tresp(
        status_code=status, content=raw,
        headers=((b"content-type", content_type.encode()), (b"set-cookie", b"__cf_bm=SECRET; path=/")),
    )  # fmt: skip


async def exchange(recorder: Recorder, flow: Any, **response: Any) -> Any:
    """Run the hooks in mitmproxy's order; an upstream answers unless the addon already did."""
    await recorder.request(flow)
    if flow.response is None:
        upstream_response(flow, **response)
        forwarded = True
    else:
        forwarded = False
    recorder.responseheaders(flow)
    if flow.response.stream and forwarded:
        for chunk in (flow.response.content[:10], flow.response.content[10:], b""):
            flow.response.stream(chunk)
    await recorder.response(flow)
    assert recorder.store is not None
    recorder.store.flush(5)
    await settled(recorder)
    return flow


async def settled(recorder: Recorder, timeout: float = 5.0) -> None:
    """Wait until the store's commit callbacks ran on this loop (every single flight ended)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while len(recorder.engine.flights):
        assert asyncio.get_running_loop().time() < deadline, "commit callbacks never ran"
        await asyncio.sleep(0)


def sample(recorder: Recorder, name: str, **labels: str) -> float:
    return recorder.registry.get_sample_value(name, labels) or 0.0


async def test_miss_is_recorded_then_replayed(recorder: Recorder) -> None:
    first = await exchange(recorder, chat_flow())
    assert first.response.headers["llmreel-cache"] == "miss"
    key = first.response.headers["llmreel-key"]
    assert len(key) == 32

    second = await exchange(recorder, chat_flow())
    assert second.response.headers["llmreel-cache"] == "hit"
    assert second.response.headers["llmreel-key"] == key
    assert json.loads(second.response.content) == CHAT_RESPONSE
    assert second.response.headers["content-type"] == "application/json"
    assert "set-cookie" not in second.response.headers


async def test_sdk_and_credential_differences_hit_the_same_recording(recorder: Recorder) -> None:
    await exchange(recorder, chat_flow(headers={"authorization": "Bearer sk-aaaaaaaaaaaaaaaaaaaaaaaa",
                                                "user-agent": "OpenAI/Python 1.0"}))  # fmt: skip
    again = await exchange(recorder, chat_flow(headers={"authorization": "Bearer sk-bbbbbbbbbbbbbbbbbbbbbbbbb",
                                                        "user-agent": "OpenAI/JS 4.0",
                                                        "x-stainless-retry-count": "1"}))  # fmt: skip
    assert again.response.headers["llmreel-cache"] == "hit"


async def test_changed_prompt_is_a_new_recording(recorder: Recorder) -> None:
    await exchange(recorder, chat_flow())
    changed = await exchange(recorder, chat_flow({**CHAT, "temperature": 0}))
    assert changed.response.headers["llmreel-cache"] == "miss"


async def test_offline_miss_is_a_clear_non_retryable_error(recorder: Recorder) -> None:
    configure(recorder, llmreel_mode="offline")
    flow = await exchange(recorder, chat_flow())
    assert flow.response.status_code == 412
    assert flow.response.headers["x-should-retry"] == "false"
    assert flow.response.headers["llmreel-cache"] == "offline_miss"
    error = json.loads(flow.response.content)["error"]
    assert error["message"].startswith("llmreel cache miss")
    assert flow.response.headers["llmreel-key"] in error["message"]
    assert "--mode auto" in error["message"]
    assert sample(recorder, "llmreel_requests_total", provider="openai", model="gpt-4o-mini",
                  operation="chat", cache="offline_miss", status_class="4xx") == 1  # fmt: skip


async def test_offline_miss_uses_the_providers_error_shape(recorder: Recorder) -> None:
    configure(recorder, llmreel_mode="offline")
    flow = await exchange(
        recorder,
        chat_flow({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": []},
                  host="api.anthropic.com", path="/v1/messages"),
    )  # fmt: skip
    body = json.loads(flow.response.content)
    assert body["type"] == "error"
    assert body["error"]["message"].startswith("llmreel cache miss")


async def test_offline_replays_what_auto_recorded(recorder: Recorder) -> None:
    await exchange(recorder, chat_flow())
    configure(recorder, llmreel_mode="offline")
    flow = await exchange(recorder, chat_flow())
    assert flow.response.headers["llmreel-cache"] == "hit"


def test_offline_refuses_every_upstream_connection(recorder: Recorder) -> None:
    configure(recorder, llmreel_mode="offline")
    server = connection.Server(address=("api.openai.com", 443))
    data = server_hooks.ServerConnectionHookData(server=server, client=tflow.tclient_conn())
    recorder.server_connect(data)
    assert server.error is not None and "offline" in server.error


def test_auto_mode_allows_upstream_connections(recorder: Recorder) -> None:
    server = connection.Server(address=("api.openai.com", 443))
    recorder.server_connect(server_hooks.ServerConnectionHookData(server=server, client=tflow.tclient_conn()))
    assert server.error is None


async def test_control_headers_are_removed_before_upstream(recorder: Recorder) -> None:
    flow = chat_flow(headers={"llmreel-cache": "bypass", "llmreel-namespace": "test_a",
                              "llmreel-session": "agent-run-1"})  # fmt: skip
    await recorder.request(flow)
    assert "llmreel-cache" not in flow.request.headers
    assert "llmreel-namespace" not in flow.request.headers
    assert "llmreel-session" not in flow.request.headers
    assert flow.response is None  # forwarded


async def test_bypass_neither_reads_nor_writes(recorder: Recorder) -> None:
    await exchange(recorder, chat_flow())
    flow = await exchange(recorder, chat_flow(headers={"llmreel-cache": "bypass"}))
    assert flow.response.headers["llmreel-cache"] == "bypass"
    assert recorder.store is not None and recorder.store.stats().entries == 1


async def test_refresh_overwrites(recorder: Recorder) -> None:
    await exchange(recorder, chat_flow())
    newer = {**CHAT_RESPONSE, "id": "chatcmpl-2"}
    flow = await exchange(recorder, chat_flow(headers={"llmreel-cache": "refresh"}), body=newer)
    assert flow.response.headers["llmreel-cache"] == "refresh"
    hit = await exchange(recorder, chat_flow())
    assert json.loads(hit.response.content)["id"] == "chatcmpl-2"


async def test_only_serves_or_fails_without_network(recorder: Recorder) -> None:
    flow = await exchange(recorder, chat_flow(headers={"llmreel-cache": "only"}))
    assert flow.response.status_code == 412


async def test_unknown_control_value_is_rejected_with_the_valid_ones(recorder: Recorder) -> None:
    flow = chat_flow(headers={"llmreel-cache": "sometimes"})
    await recorder.request(flow)
    assert flow.response.status_code == 400
    message = json.loads(flow.response.content)["error"]["message"]
    assert "bypass, refresh, only" in message


async def test_namespaces_scope_recordings(recorder: Recorder) -> None:
    await exchange(recorder, chat_flow(headers={"llmreel-namespace": "test_one"}))
    other = await exchange(recorder, chat_flow(headers={"llmreel-namespace": "test_two"}))
    assert other.response.headers["llmreel-cache"] == "miss"
    same = await exchange(recorder, chat_flow(headers={"llmreel-namespace": "test_one"}))
    assert same.response.headers["llmreel-cache"] == "hit"


async def test_passthrough_never_touches_the_cache(recorder: Recorder) -> None:
    configure(recorder, llmreel_mode="passthrough")
    await exchange(recorder, chat_flow())
    flow = await exchange(recorder, chat_flow())
    assert flow.response.headers["llmreel-cache"] == "passthrough"
    assert recorder.store is not None and recorder.store.stats().entries == 0
    assert sample(recorder, "llmreel_tokens_total", provider="openai", model="gpt-4o-mini", type="input") == 18


@pytest.mark.parametrize("status", [400, 401, 429, 500, 529])
async def test_errors_pass_through_unrecorded(recorder: Recorder, status: int) -> None:
    flow = await exchange(recorder, chat_flow(), status=status, body={"error": {"message": "no"}})
    assert flow.response.status_code == status
    assert recorder.store is not None and recorder.store.stats().entries == 0
    assert sample(recorder, "llmreel_upstream_errors_total", provider="openai", error_type=str(status)) == 1


async def test_non_llm_traffic_is_untouched(recorder: Recorder) -> None:
    flow = tflow.tflow(req=tutils.treq(method=b"GET", host="example.com", path=b"/index.html"))
    await recorder.request(flow)
    assert flow.response is None
    assert "llmreel" not in flow.metadata
    models = tflow.tflow(req=tutils.treq(method=b"GET", host="api.openai.com", path=b"/v1/models"))
    await recorder.request(models)
    assert "llmreel" not in models.metadata


async def test_streams_are_teed_and_recorded_with_chunk_timings(recorder: Recorder) -> None:
    sse = (
        b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
        b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
        b"data: [DONE]\n\n"
    )
    body = {**CHAT, "stream": True}
    flow = await exchange(recorder, chat_flow(body), body=sse, content_type="text/event-stream; charset=utf-8")
    assert callable(flow.response.stream)
    assert recorder.store is not None
    rec = recorder.store.get("default", flow.response.headers["llmreel-key"])
    assert rec is not None and rec.body == sse
    assert [n for _, n in rec.chunks] == [10, len(sse) - 10]
    hit = await exchange(recorder, chat_flow(body))
    assert hit.response.content == sse
    assert hit.response.headers["content-type"] == "text/event-stream; charset=utf-8"


async def test_incomplete_stream_is_not_recorded(recorder: Recorder) -> None:
    sse = b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
    flow = await exchange(recorder, chat_flow({**CHAT, "stream": True}), body=sse,
                          content_type="text/event-stream")  # fmt: skip
    assert flow.response.status_code == 200
    assert recorder.store is not None and recorder.store.stats().entries == 0


async def test_no_secret_reaches_the_store(recorder: Recorder, tmp_path: Path) -> None:
    secret = "sk-proj-THISISAVERYSECRETKEY1234567890"
    await exchange(recorder, chat_flow(headers={"authorization": f"Bearer {secret}", "x-api-key": secret,
                                                "cookie": f"session={secret}"}))  # fmt: skip
    gemini = chat_flow({"contents": []}, host="generativelanguage.googleapis.com",
                       path=f"/v1beta/models/gemini-2.5-flash:generateContent?key={secret}")  # fmt: skip
    gemini_body = {"candidates": [], "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1}}
    await exchange(recorder, gemini, body=gemini_body)
    assert recorder.store is not None and recorder.store.stats().entries == 2
    recorder.done()
    # Every file, and every stored value decompressed; "SECRET" is the upstream's set-cookie.
    assert leaks(tmp_path / "store", {"key": secret, "cookie": "SECRET"}) == []


async def test_hits_count_as_saved_not_billed(recorder: Recorder) -> None:
    await exchange(recorder, chat_flow())
    await exchange(recorder, chat_flow())
    labels = {"provider": "openai", "model": "gpt-4o-mini"}
    assert sample(recorder, "llmreel_tokens_total", **labels, type="input") == 9
    assert sample(recorder, "llmreel_saved_tokens_total", **labels, type="input") == 9
    assert sample(recorder, "llmreel_saved_tokens_total", **labels, type="output") == 3
    assert sample(recorder, "llmreel_requests_total", **labels, operation="chat", cache="hit", status_class="2xx") == 1
    assert sample(recorder, "llmreel_cost_usd_total", **labels) > 0
    assert sample(recorder, "llmreel_saved_cost_usd_total", **labels) == pytest.approx(
        sample(recorder, "llmreel_cost_usd_total", **labels)
    )


# Single flight is tested in test_engine.py (engine) and test_singleflight.py (a real proxy).


def test_bad_options_are_reported(recorder: Recorder) -> None:
    from mitmproxy import exceptions

    with pytest.raises(exceptions.OptionsError, match="HOST=PROVIDER"):
        configure(recorder, llmreel_hosts=["nonsense"])
    with pytest.raises(exceptions.OptionsError):
        configure(recorder, llmreel_mode="sometimes")


def test_the_script_file_loads_into_mitmproxy(tmp_path: Path) -> None:
    script = Path(__file__).parent.parent / "addons" / "recorder.py"
    with taddons.context() as tctx:
        loaded = tctx.script(str(script))
        assert type(loaded.addons[0]).__name__ == "Recorder"
    _ = orjson  # keep import used


async def test_sequence_mode_replays_occurrences_in_order_then_the_last(recorder: Recorder) -> None:
    configure(recorder, llmreel_sequence=True)
    for n in range(2):
        flow = await exchange(recorder, chat_flow(), body={**CHAT_RESPONSE, "id": f"call-{n}"})
        assert flow.response.headers["llmreel-cache"] == "miss"
    configure(recorder, llmreel_mode="offline")
    recorder.engine.new_run()
    ids = [json.loads((await exchange(recorder, chat_flow())).response.content)["id"] for _ in range(4)]
    assert ids == ["call-0", "call-1", "call-1", "call-1"]


async def test_max_age_rerecords_in_auto_and_warns_offline(
    recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    await exchange(recorder, chat_flow())
    assert recorder.store is not None
    key = next(iter(recorder.store.iter())).key
    old = recorder.store.get("default", key)
    assert old is not None
    old.recorded_at -= 40 * 86400
    recorder.store.put(old)
    configure(recorder, llmreel_max_age="30d")
    flow = await exchange(recorder, chat_flow(), body={**CHAT_RESPONSE, "id": "fresh"})
    assert flow.response.headers["llmreel-cache"] == "miss"
    assert json.loads((await exchange(recorder, chat_flow())).response.content)["id"] == "fresh"

    stale = recorder.store.get("default", key)
    assert stale is not None
    stale.recorded_at -= 40 * 86400
    recorder.store.put(stale)
    configure(recorder, llmreel_mode="offline")
    served = await exchange(recorder, chat_flow())
    assert served.response.headers["llmreel-cache"] == "hit"
    assert "older than --max-age" in caplog.text


async def test_bad_max_age_is_an_options_error(recorder: Recorder) -> None:
    from mitmproxy import exceptions

    with pytest.raises(exceptions.OptionsError, match="30d"):
        configure(recorder, llmreel_max_age="a month")


async def test_hits_are_marked_used_and_reported(recorder: Recorder) -> None:
    from llmreel.storage.lmdbstore import LmdbStore, entry_key

    recorder.report.detailed = True
    first = await exchange(recorder, chat_flow())
    await exchange(recorder, chat_flow())
    await exchange(recorder, chat_flow({**CHAT, "temperature": 1}))
    key = first.response.headers["llmreel-key"]
    report = recorder.report
    assert report.hits == 1 and len(report.misses) == 2 and report.written == 2
    assert "2 recorded" in report.render()
    assert report.used == {("default", key, 0)}
    report.find_unused([("default", key, 0), ("default", "old", 0)])
    assert report.unused == [("default", "old")]  # the two written now are not "unused"
    recorder.engine.flush_used()
    store = recorder.store
    assert isinstance(store, LmdbStore)
    store.flush(5)
    used_at = store.get_raw(b"used", entry_key("default", key))
    assert used_at is not None and abs(int(used_at) - __import__("time").time()) < 60


async def test_scope_by_credential_isolates_api_keys(recorder: Recorder, tmp_path: Path) -> None:
    configure(recorder, llmreel_scope_by_credential=True)
    alice = {"authorization": "Bearer sk-alice-0000000000000000000000"}
    bob = {"authorization": "Bearer sk-bob-00000000000000000000000000"}
    await exchange(recorder, chat_flow(headers=alice))
    assert (await exchange(recorder, chat_flow(headers=alice))).response.headers["llmreel-cache"] == "hit"
    assert (await exchange(recorder, chat_flow(headers=bob))).response.headers["llmreel-cache"] == "miss"
    assert recorder.store is not None
    namespaces = {r.namespace for r in recorder.store.iter()}
    assert len(namespaces) == 2 and all(ns.startswith("default@") for ns in namespaces)
    recorder.done()
    for file in (tmp_path / "store").iterdir():
        assert b"sk-alice" not in file.read_bytes() and b"sk-bob" not in file.read_bytes()


async def test_offline_miss_explains_what_changed(recorder: Recorder) -> None:
    await exchange(recorder, chat_flow({**CHAT, "temperature": 0.2}))
    configure(recorder, llmreel_mode="offline")
    changed = {**CHAT, "temperature": 0.7, "messages": [{"role": "user", "content": "Hello!"}]}
    flow = await exchange(recorder, chat_flow(changed))
    message = json.loads(flow.response.content)["error"]["message"]
    assert "temperature" in message and "0.2" in message and "0.7" in message
    assert "messages[0].content" in message
    assert message.index("differs") < message.index("To record it")
    assert "temperature" in recorder.report.render()


async def test_offline_miss_with_nothing_recorded_says_so(recorder: Recorder) -> None:
    configure(recorder, llmreel_mode="offline")
    flow = await exchange(recorder, chat_flow())
    assert "Nothing was recorded for this endpoint" in json.loads(flow.response.content)["error"]["message"]


async def test_offline_miss_explanation_reaches_the_log(recorder: Recorder) -> None:
    from llmreel.core.exchange import Exchange

    seen: list[Exchange] = []
    recorder.sinks.append(seen.append)
    await exchange(recorder, chat_flow({**CHAT, "temperature": 0.2}))
    configure(recorder, llmreel_mode="offline")
    await exchange(recorder, chat_flow({**CHAT, "temperature": 0.9}))
    miss = seen[-1]
    assert miss.cache == "offline_miss" and miss.error_type == "offline_miss"
    assert "temperature" in miss.explanation and miss.error is not None and "temperature" in miss.error


def test_script_reload_reopens_the_same_store_and_metrics(tmp_path: Path) -> None:
    """mitmdump -s hot reload: done() on the old instance, then a fresh module on the same store."""
    import importlib.util
    import socket

    script = Path(__file__).parent.parent / "addons" / "recorder.py"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = str(tmp_path / "store")
    for _ in range(2):
        spec = importlib.util.spec_from_file_location("__mitmproxy_script__.recorder", script)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        addon = module.addons[0]
        with taddons.context(addon) as tctx:
            tctx.configure(addon, llmreel_store=store, llmreel_metrics_port=port)
            addon.running()
            assert addon.metrics_port == port and addon.metrics_error is None
            assert addon.store is not None and addon.store.stats().entries == 0
            addon.done()  # closes LMDB (py-lmdb refuses a second open) and frees the port


def _state(flow: Any) -> dict[str, Any]:
    state = flow.response.get_state()
    return {k: v for k, v in state.items() if not k.startswith("timestamp")}


async def test_repeated_hits_get_the_same_response_and_their_own_headers(recorder: Recorder) -> None:
    await exchange(recorder, chat_flow())
    first = await exchange(recorder, chat_flow())  # built with Response.make
    second = await exchange(recorder, chat_flow())  # copied from the prepared one
    assert _state(second) == _state(first)
    assert vars(second.response).keys() == vars(first.response).keys()
    assert vars(second.response.data).keys() == vars(first.response.data).keys()
    assert second.response.timestamp_start >= first.response.timestamp_start
    second.response.headers["x-added-by-another-addon"] = "1"
    third = await exchange(recorder, chat_flow())
    assert "x-added-by-another-addon" not in third.response.headers
    assert _state(third) == _state(first)


_REPLACE = """
import sys
from llmreel.storage.lmdbstore import LmdbStore
with LmdbStore(sys.argv[1]) as store:
    rec = store.get("default", sys.argv[2])
    if sys.argv[3] == "rm":
        store.delete("default", sys.argv[2])
    else:
        rec.body = sys.argv[3].encode()
        store.put(rec)
"""


async def test_a_recording_replaced_by_another_process_is_served_as_it_is_now(
    recorder: Recorder, tmp_path: Path
) -> None:
    await exchange(recorder, chat_flow())
    key = ""
    for _ in range(3):  # decoded and prepared once, then served from memory
        hit = await exchange(recorder, chat_flow())
        assert json.loads(hit.response.content) == CHAT_RESPONSE
        key = hit.response.headers["llmreel-key"]

    async def other_process(change: str) -> None:  # as `llmreel cache` or another proxy would
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _REPLACE, str(tmp_path / "store"), key, change
        )
        assert await proc.wait() == 0

    newer = json.dumps({**CHAT_RESPONSE, "id": "chatcmpl-elsewhere"})
    await other_process(newer)
    hit = await exchange(recorder, chat_flow())
    assert hit.response.content == newer.encode()
    assert hit.response.headers["content-length"] == str(len(newer))
    await other_process("rm")
    gone = await exchange(recorder, chat_flow())
    assert gone.response.headers["llmreel-cache"] == "miss"
