"""End to end: the official SDKs -> a real llmreel proxy -> the fake upstream, over real sockets."""

from __future__ import annotations

import concurrent.futures
import itertools
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from llmreel.cli.reverse import Reverse
from tests.conftest import ProxyThread, http_client
from tests.fakeupstream import FakeUpstream
from tests.test_badinput import requests_total

MakeProxy = Callable[..., ProxyThread]


@pytest.fixture(params=[1, 2], ids=["1-worker", "2-workers"])
def proxy_workers(request: pytest.FixtureRequest) -> int:
    """Every test here runs against one proxy process and against `--workers 2`."""
    return int(request.param)


def openai_client(proxy: ProxyThread, fake: FakeUpstream, bundle: str, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{fake.url}/v1",
        api_key="sk-test-0000000000000000000000",
        http_client=openai.DefaultHttpxClient(proxy=proxy.url, verify=ssl.create_default_context(cafile=bundle)),
        **kw,
    )


def anthropic_client(proxy: ProxyThread, fake: FakeUpstream, bundle: str, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=fake.url,
        api_key="sk-ant-test-000000000000000000",
        http_client=anthropic.DefaultHttpxClient(proxy=proxy.url, verify=ssl.create_default_context(cafile=bundle)),
        **kw,
    )


def openai_session(client: openai.OpenAI) -> dict[str, Any]:
    """A little agent session: what the caller gets back from each call."""
    messages = [{"role": "user", "content": "Say hello to the reel"}]
    chat = client.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=messages, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = [c.model_dump() for c in stream]
    tools = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
    )  # fmt: skip
    responses = client.responses.create(model="gpt-4.1-nano", input="Tell me a short fact", stream=True)
    events = [e.model_dump() for e in responses]
    embedding = client.embeddings.create(model="text-embedding-3-small", input="reel")
    return {
        "chat": chat.model_dump(),
        "stream": chunks,
        "tools": tools.model_dump(),
        "responses": events,
        "embedding": embedding.model_dump(),
    }


def anthropic_session(client: anthropic.Anthropic) -> dict[str, Any]:
    messages = [{"role": "user", "content": "Say hello to the reel"}]
    message = client.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=messages)  # type: ignore[arg-type]
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=100, messages=messages) as stream:  # type: ignore[arg-type]
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    return {"message": message.model_dump(), "streamed_text": text, "final": final.model_dump()}


def test_openai_sdk_records_then_replays_offline_identically(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str
) -> None:
    proxy = make_proxy(mode="auto")
    recorded = openai_session(openai_client(proxy, fake, bundle))
    assert len(fake.requests) == 5
    assert recorded["stream"][-1]["usage"] is not None
    assert recorded["tools"]["choices"][0]["message"]["tool_calls"]
    proxy.stop()

    connections = fake.connections
    offline = make_proxy(mode="offline")
    replayed = openai_session(openai_client(offline, fake, bundle))
    assert replayed == recorded  # ids and timestamps too: it came from the recording
    assert fake.connections == connections, "offline mode opened an upstream connection"
    assert len(fake.requests) == 5


def test_anthropic_sdk_records_then_replays_offline_identically(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str
) -> None:
    proxy = make_proxy()
    recorded = anthropic_session(anthropic_client(proxy, fake, bundle))
    assert recorded["streamed_text"] == recorded["final"]["content"][0]["text"]
    proxy.stop()
    connections = fake.connections
    offline = make_proxy(mode="offline")
    assert anthropic_session(anthropic_client(offline, fake, bundle)) == recorded
    assert fake.connections == connections


def test_second_identical_request_in_auto_is_a_hit(make_proxy: MakeProxy, fake: FakeUpstream, bundle: str) -> None:
    proxy = make_proxy()
    client = openai_client(proxy, fake, bundle)
    messages = [{"role": "user", "content": "once"}]
    first = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    second = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    assert first.headers["llmreel-cache"] == "miss"
    assert second.headers["llmreel-cache"] == "hit"
    assert first.headers["llmreel-key"] == second.headers["llmreel-key"]
    assert first.parse().id == second.parse().id
    assert len(fake.requests) == 1


def test_gemini_streams_and_json_record_and_replay(make_proxy: MakeProxy, fake: FakeUpstream, bundle: str) -> None:
    proxy = make_proxy()
    body = {"contents": [{"role": "user", "parts": [{"text": "Hello Gemini"}]}]}
    base = f"{fake.url}/v1beta/models/gemini-2.5-flash"
    with http_client(proxy, bundle) as client:
        results = []
        for path in (":generateContent", ":streamGenerateContent?alt=sse", ":streamGenerateContent"):
            url = f"{base}{path}{'&' if '?' in path else '?'}key=AIzaSyTESTKEY000000000000000000000"
            first = client.post(url, json=body)
            second = client.post(url, json=body)
            assert first.status_code == 200, first.text
            assert (first.headers["llmreel-cache"], second.headers["llmreel-cache"]) == ("miss", "hit")
            assert second.content == first.content
            assert second.headers["content-type"] == first.headers["content-type"]
            results.append(first)
    assert b"\r\n\r\n" in results[1].content  # CRLF SSE kept byte for byte
    assert len(fake.requests) == 3


def test_stream_reaches_the_client_incrementally(make_proxy: MakeProxy, fake: FakeUpstream, bundle: str) -> None:
    proxy = make_proxy()
    client = openai_client(proxy, fake, bundle)
    pause = 0.25
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "one two three four five six"}],  # type: ignore[arg-type]
        stream=True, extra_headers={"x-fake-delay-ms": str(int(pause * 1000))},
    )  # fmt: skip
    arrivals = [time.monotonic() for _ in stream]
    assert len(arrivals) >= 5
    # The upstream pauses between events. Buffered, the events would all arrive together at the
    # end; passed on as they come, consecutive events keep most of the upstream's pause between
    # them. A busy machine only lengthens the gaps, so this cannot fail for being slow.
    gaps = sorted(b - a for a, b in itertools.pairwise(arrivals))
    assert gaps[len(gaps) // 2] > 0.5 * pause, gaps


def test_replayed_stream_is_consumed_as_a_stream(make_proxy: MakeProxy, fake: FakeUpstream, bundle: str) -> None:
    proxy = make_proxy()
    client = openai_client(proxy, fake, bundle)
    kwargs: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "stream me"}],
                              "stream": True}  # fmt: skip
    live = [c.choices[0].delta.content for c in client.chat.completions.create(**kwargs) if c.choices]
    replay = client.chat.completions.with_raw_response.create(**kwargs)
    assert replay.headers["llmreel-cache"] == "hit"
    assert replay.headers["content-type"].startswith("text/event-stream")
    assert [c.choices[0].delta.content for c in replay.parse() if c.choices] == live
    assert len(live) >= 4


def miss_error_classes(sdk: Any) -> tuple[type[Exception], ...]:
    """What an SDK may raise for an offline miss: its generic status error, or the class it
    names for 412 itself (Anthropic's PreconditionFailedError). Never NotFound, auth, etc."""
    return (sdk.APIStatusError, getattr(sdk, "PreconditionFailedError", sdk.APIStatusError))


def test_offline_miss_is_a_generic_sdk_error_and_not_retried(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str
) -> None:
    # A 404 became NotFoundError, which wrappers (LangChain's AnthropicModelNotFoundError) read
    # as a wrong model name. Each official SDK must raise its generic status error, carrying
    # llmreel's message, and send the request once even with retries on.
    proxy = make_proxy(mode="offline")
    client = openai_client(proxy, fake, bundle, max_retries=3)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "never"}])  # type: ignore[arg-type]
    assert type(caught.value) in miss_error_classes(openai), type(caught.value)
    assert caught.value.status_code == 412
    assert "llmreel cache miss" in str(caught.value) and "--mode auto" in str(caught.value)
    assert caught.value.body["type"] == "llmreel_cache_miss"  # type: ignore[index]
    assert requests_total(proxy, cache="offline_miss") == 1, "the SDK retried the offline miss"

    aclient = anthropic_client(proxy, fake, bundle, max_retries=3)
    with pytest.raises(anthropic.APIStatusError) as acaught:
        aclient.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=[{"role": "user", "content": "x"}])  # type: ignore[arg-type]
    assert type(acaught.value) in miss_error_classes(anthropic), type(acaught.value)
    assert acaught.value.status_code == 412
    assert "llmreel cache miss" in str(acaught.value) and "--mode auto" in str(acaught.value)
    assert acaught.value.body["error"]["type"] == "llmreel_cache_miss"  # type: ignore[index]
    assert requests_total(proxy, cache="offline_miss") == 2, "the SDK retried the offline miss"
    assert fake.requests == []


def test_reverse_mode_with_a_base_url(make_proxy: MakeProxy, fake: FakeUpstream, bundle: str) -> None:
    proxy = make_proxy(reverse=[Reverse(fake.url, 0)])
    client = openai.OpenAI(base_url=f"{proxy.reverse_url()}/v1", api_key="sk-test-000000000000000000000",
                           http_client=openai.DefaultHttpxClient(trust_env=False))  # fmt: skip
    messages = [{"role": "user", "content": "via base url"}]
    first = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    second = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    assert (first.headers["llmreel-cache"], second.headers["llmreel-cache"]) == ("miss", "hit")
    assert first.parse().id == second.parse().id


def test_cut_stream_is_not_recorded(make_proxy: MakeProxy, fake: FakeUpstream, bundle: str) -> None:
    proxy = make_proxy()
    client = openai_client(proxy, fake, bundle, max_retries=0)
    kwargs: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "cut me off"}],
                              "stream": True}  # fmt: skip
    with pytest.raises((openai.APIError, httpx.HTTPError, Exception)):
        list(client.chat.completions.create(**kwargs, extra_headers={"x-fake-cut-after": "2"}))
    after = client.chat.completions.with_raw_response.create(**kwargs)
    assert after.headers["llmreel-cache"] == "miss"
    list(after.parse())


def test_upstream_errors_pass_through_unrecorded(make_proxy: MakeProxy, fake: FakeUpstream, bundle: str) -> None:
    proxy = make_proxy()
    client = openai_client(proxy, fake, bundle, max_retries=0)
    messages = [{"role": "user", "content": "fail"}]
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4o-mini", messages=messages, extra_headers={"x-fake-status": "429"})  # type: ignore[arg-type]
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o-mini", messages=messages, extra_headers={"x-fake-status": "500"})  # type: ignore[arg-type]
    ok = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    assert ok.headers["llmreel-cache"] == "miss"


def test_identical_concurrent_misses_make_one_upstream_call(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str
) -> None:
    proxy = make_proxy()

    def call(_: int) -> bytes:
        with http_client(proxy, bundle) as client:
            response = client.post(
                f"{fake.url}/v1/chat/completions",
                json={"model": "gpt-4o-mini", "stream": True,
                      "messages": [{"role": "user", "content": "all of us together now"}]},
                headers={"x-fake-delay-ms": "150", "authorization": "Bearer sk-x"},
            )  # fmt: skip
            assert response.status_code == 200
            return response.content

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(call, range(8)))
    assert len(set(bodies)) == 1  # ids are random per upstream call: one call served all
    assert b"[DONE]" in bodies[0]
    assert len(fake.requests) == 1


def test_curl_records_and_replays(make_proxy: MakeProxy, fake: FakeUpstream, bundle: str) -> None:
    import subprocess

    body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"from curl"}]}'

    def curl(proxy: ProxyThread) -> tuple[str, str]:
        result = subprocess.run(
            ["curl", "-sS", "-D", "/dev/stderr", "--proxy", proxy.url, "--cacert", bundle,
             "-H", "content-type: application/json", "-H", "authorization: Bearer sk-curl-000000000000000000",
             "--compressed", "-d", body, f"{fake.url}/v1/chat/completions"],
            capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        headers = result.stderr.splitlines()  # the CONNECT response's, then the response's
        cache = next(line.split(":", 1)[1].strip() for line in headers if line.lower().startswith("llmreel-cache"))
        return cache, result.stdout

    proxy = make_proxy()
    recorded = curl(proxy)
    proxy.stop()
    offline = make_proxy(mode="offline")
    replayed = curl(offline)
    assert (recorded[0], replayed[0]) == ("miss", "hit")
    assert replayed[1] == recorded[1] and '"chat.completion"' in recorded[1]


def test_committed_export_replays_offline_and_a_changed_prompt_says_what_changed(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str, tmp_path: Path
) -> None:
    import subprocess
    import sys

    proxy = make_proxy()
    recorded = openai_session(openai_client(proxy, fake, bundle))
    proxy.stop()
    export = tmp_path / "recordings"
    llmreel = str(Path(sys.executable).parent / "llmreel")
    done = subprocess.run([llmreel, "cache", "export", str(export), "--store", str(tmp_path / "store")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(list(export.glob("*/*.json"))) == 5

    connections = fake.connections
    offline = make_proxy(mode="offline", store=str(export))
    client = openai_client(offline, fake, bundle, max_retries=0)
    assert openai_session(client) == recorded
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello to the reel!"}])  # type: ignore[arg-type]
    message = str(caught.value)
    assert "messages[0].content" in message and "Say hello to the reel!" in message
    assert fake.connections == connections


def test_log_file_gets_one_json_line_per_exchange(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str, tmp_path: Path
) -> None:
    import json
    import stat

    log_file = tmp_path / "exchanges.jsonl"
    proxy = make_proxy(log_file=str(log_file), log_bodies=True)
    client = openai_client(proxy, fake, bundle)
    for _ in range(2):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "log me"}])  # type: ignore[arg-type]
    proxy.stop()
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [line["cache"] for line in lines] == ["miss", "hit"]
    for field in ("id", "time", "method", "url", "status", "provider", "model", "operation", "cache",
                  "namespace", "input_tokens", "output_tokens", "cost_usd", "duration_s", "ttfc_s", "error"):  # fmt: skip
        assert field in lines[0], field
    assert lines[0]["request_body"]["messages"][0]["content"] == "log me"
    assert "sk-test-0000000000000000000000" not in log_file.read_text()
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
