"""Tests for the fake upstream, driven by the official SDKs (no proxy in between).

The openai 3.x and anthropic 2.x SDKs use ``httpx2``. openai also accepts a legacy
``httpx.Client``; anthropic rejects it, so both get an ``httpx2.Client`` whose ``verify`` is an
SSLContext trusting the fake's certificate (``verify=<path>`` is deprecated in httpx2).
"""

from __future__ import annotations

import base64
import gzip
import itertools
import json
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from tests.fakeupstream import FakeUpstream, Knobs, build_reply, decode_body

TOOLS_CHAT = [
    {
        "type": "function",
        "function": {
            "name": "get_capital",
            "parameters": {
                "type": "object",
                "properties": {"country": {"type": "string"}},
                "required": ["country"],
            },
        },
    }
]


@pytest.fixture
def up(fake: FakeUpstream) -> FakeUpstream:
    """The session's fake upstream (see conftest), reset."""
    return fake


@pytest.fixture
def http(up: FakeUpstream) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=up.url, verify=up.ssl_context(), timeout=10) as client:
        yield client


@pytest.fixture
def oai(up: FakeUpstream) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(
        base_url=up.url + "/v1",
        api_key="sk-test",
        max_retries=0,
        http_client=httpx2.Client(verify=up.ssl_context(), timeout=10),
    )
    yield client
    client.close()


@pytest.fixture
def claude(up: FakeUpstream) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(
        base_url=up.url,
        api_key="sk-ant-test",
        max_retries=0,
        http_client=httpx2.Client(verify=up.ssl_context(), timeout=10),
    )
    yield client
    client.close()


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def sse_data(raw: bytes, sep: bytes = b"\n\n") -> list[str]:
    """The `data:` payloads of an SSE body."""
    out = []
    for block in raw.split(sep):
        for line in block.splitlines():
            if line.startswith(b"data: "):
                out.append(line[6:].decode())
    return out


# ---- OpenAI Chat Completions -----------------------------------------------------------------


def test_chat_non_stream_text_usage_and_wire(
    oai: openai.OpenAI, up: FakeUpstream, http: httpx2.Client
) -> None:
    r = oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=user("what is the capital"),
        extra_headers={"x-fake-cached-tokens": "5"},
    )
    assert r.choices[0].message.content.startswith("Echo: what is the capital [")
    assert r.usage is not None
    assert r.usage.prompt_tokens == 4 + 7 + 5  # words + 7, cached tokens included
    assert r.usage.prompt_tokens_details.cached_tokens == 5
    assert up.billed == [
        {
            "provider": "openai",
            "model": "gpt-4o-mini",
            "input": 16,
            "output": r.usage.completion_tokens,
            "cache_read": 5,
            "cache_write": 0,
            "reasoning": 0,
        }
    ]
    raw = http.post("/v1/chat/completions", json={"model": "m", "messages": user("x")})
    assert raw.headers["content-encoding"] == "gzip"
    assert raw.headers["content-type"] == "application/json"
    assert raw.headers["x-request-id"].startswith("req_")
    assert "openai-processing-ms" in raw.headers
    assert raw.headers["set-cookie"].startswith("__cf_bm=SECRETCOOKIE")
    assert raw.text.startswith('{\n  "id": "chatcmpl-') and raw.text.endswith("}\n")


def test_chat_is_deterministic_but_ids_are_random(oai: openai.OpenAI) -> None:
    a = oai.chat.completions.create(model="gpt-4o-mini", messages=user("same prompt"))
    b = oai.chat.completions.create(model="gpt-4o-mini", messages=user("same prompt"))
    c = oai.chat.completions.create(model="gpt-4o-mini", messages=user("other prompt"))
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.choices[0].message.content != c.choices[0].message.content
    assert a.id != b.id


def test_chat_stream_with_usage(oai: openai.OpenAI, up: FakeUpstream, http: httpx2.Client) -> None:
    stream = oai.chat.completions.create(
        model="gpt-5",
        messages=user("stream me please"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    plain = oai.chat.completions.create(model="gpt-5", messages=user("stream me please"))
    assert text == plain.choices[0].message.content
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 4
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert usage.completion_tokens_details.reasoning_tokens == 64  # gpt-5 is a reasoning model
    assert up.billed[0] == {
        "provider": "openai",
        "model": "gpt-5",
        "input": usage.prompt_tokens,
        "output": usage.completion_tokens,
        "cache_read": 0,
        "cache_write": 0,
        "reasoning": 64,
    }

    raw = http.post(
        "/v1/chat/completions",
        json={
            "model": "gpt-4o-mini",
            "messages": user("hi"),
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert raw.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert raw.headers["transfer-encoding"] == "chunked"
    assert "content-encoding" not in raw.headers  # SSE is never compressed
    datas = sse_data(raw.content)
    assert datas[-1] == "[DONE]" and raw.content.endswith(b"data: [DONE]\n\n")
    objs = [json.loads(d) for d in datas[:-1]]
    assert all("obfuscation" in o and "usage" in o for o in objs)
    assert [o["usage"] is None for o in objs] == [True] * (len(objs) - 1) + [False]
    assert objs[-2]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }


def test_chat_tool_call_stream_and_follow_up(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="gpt-4o-mini", messages=user("capital of France"), tools=TOOLS_CHAT, stream=True
    )
    args, name, finish = "", None, None
    for chunk in stream:
        choice = chunk.choices[0]
        for call in choice.delta.tool_calls or []:
            name = name or (call.function.name if call.function else None)
            args += (call.function.arguments or "") if call.function else ""
        finish = choice.finish_reason or finish
    assert name == "get_capital" and finish == "tool_calls"
    assert json.loads(args) == {"country": "capital of France"}

    history = user("capital of France") + [
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_capital", "arguments": args},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Paris"},
    ]
    r = oai.chat.completions.create(model="gpt-4o-mini", messages=history, tools=TOOLS_CHAT)
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content


def test_legacy_completions(oai: openai.OpenAI, up: FakeUpstream) -> None:
    r = oai.completions.create(model="gpt-3.5-turbo-instruct", prompt="say hi")
    streamed = "".join(
        c.choices[0].text
        for c in oai.completions.create(
            model="gpt-3.5-turbo-instruct", prompt="say hi", stream=True
        )
        if c.choices
    )
    assert r.choices[0].text == streamed and streamed.startswith("Echo: say hi")
    assert len(up.billed) == 2


# ---- OpenAI Responses and embeddings ---------------------------------------------------------


def test_responses_stream_events(oai: openai.OpenAI, up: FakeUpstream) -> None:
    events = list(oai.responses.create(model="gpt-4.1-nano", input="two plus two", stream=True))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert types.count("response.output_text.delta") >= 4
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert final.output_text.startswith("Echo: two plus two")
    assert final.usage is not None
    assert up.billed[0]["input"] == final.usage.input_tokens == 3 + 7
    assert up.billed[0]["output"] == final.usage.output_tokens


def test_responses_non_stream_and_tools(oai: openai.OpenAI, http: httpx2.Client) -> None:
    tools: Any = [
        {
            "type": "function",
            "name": "get_capital",
            "parameters": TOOLS_CHAT[0]["function"]["parameters"],
            "strict": True,
        }
    ]
    r = oai.responses.create(model="o4-mini", input="capital of Spain", tools=tools)
    calls = [o for o in r.output if o.type == "function_call"]
    assert [o.type for o in r.output] == ["reasoning", "function_call"]
    assert json.loads(calls[0].arguments) == {"country": "capital of Spain"}
    assert r.usage is not None and r.usage.output_tokens_details.reasoning_tokens == 64

    with oai.responses.stream(
        model="gpt-4.1-nano", input="capital of Spain", tools=tools
    ) as stream:
        final = stream.get_final_response()
    assert final.output[0].type == "function_call"

    raw = http.post("/v1/responses", json={"model": "gpt-4.1", "input": "x"})
    assert raw.text.startswith('{\n  "id": "resp_') and raw.text.endswith("}")  # no newline


def test_embeddings_base64_via_sdk(
    oai: openai.OpenAI, up: FakeUpstream, http: httpx2.Client
) -> None:
    r = oai.embeddings.create(model="text-embedding-3-small", input=["hello world", "bye"])
    assert up.requests[-1].json["encoding_format"] == "base64"  # the SDK's default
    assert [len(d.embedding) for d in r.data] == [1536, 1536]
    assert r.usage.prompt_tokens == 3
    floats = http.post(
        "/v1/embeddings",
        json={"model": "text-embedding-3-small", "input": "hello world", "dimensions": 8},
    ).json()
    b64 = http.post(
        "/v1/embeddings",
        json={
            "model": "text-embedding-3-small",
            "input": "hello world",
            "dimensions": 8,
            "encoding_format": "base64",
        },
    ).json()
    decoded = struct.unpack("<8f", base64.b64decode(b64["data"][0]["embedding"]))
    as_float32 = struct.unpack("<8f", struct.pack("<8f", *floats["data"][0]["embedding"]))
    assert decoded == as_float32  # the float form is the same float32 values, printed


def test_gemini_embed_single_and_batch(http: httpx2.Client) -> None:
    one = http.post(
        "/v1beta/models/gemini-embedding-001:embedContent",
        json={"content": {"parts": [{"text": "hello world"}]}, "outputDimensionality": 8},
    )
    assert one.headers["content-type"] == "application/json; charset=UTF-8"
    assert one.text.endswith("}\n") and '\n  "embedding": {' in one.text  # Gemini's JSON style
    batch = http.post(
        "/v1beta/models/gemini-embedding-001:batchEmbedContents",
        json={"requests": [{"model": "models/gemini-embedding-001", "outputDimensionality": 8,
                            "content": {"parts": [{"text": t}]}} for t in ("hello world", "bye")]},
    ).json()  # fmt: skip
    values = [e["values"] for e in batch["embeddings"]]
    assert [len(v) for v in values] == [8, 8] and values[0] != values[1]
    assert values[0] == one.json()["embedding"]["values"]  # deterministic: model and text


# ---- Anthropic --------------------------------------------------------------------------------


def test_anthropic_create_with_cache_usage(claude: anthropic.Anthropic, up: FakeUpstream) -> None:
    m = claude.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=64,
        system="be brief",
        messages=user("hello claude"),
        extra_headers={"x-fake-cached-tokens": "100", "x-fake-cache-write-tokens": "20"},
    )
    assert m.content[0].type == "text" and m.content[0].text.startswith("Echo: hello claude")
    assert m.usage.input_tokens == 4 + 7  # excludes cache reads and writes
    assert m.usage.cache_read_input_tokens == 100
    assert m.usage.cache_creation_input_tokens == 20
    assert m.usage.cache_creation is not None
    assert m.usage.cache_creation.ephemeral_5m_input_tokens == 20
    assert up.billed == [
        {
            "provider": "anthropic",
            "model": "claude-sonnet-4-6",
            "input": 131,
            "output": m.usage.output_tokens,
            "cache_read": 100,
            "cache_write": 20,
            "reasoning": 0,
        }
    ]


def test_anthropic_stream_final_message(
    claude: anthropic.Anthropic, up: FakeUpstream, http: httpx2.Client
) -> None:
    with claude.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=64,
        messages=user("stream to me"),
        extra_headers={"x-fake-cached-tokens": "7"},
    ) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(texts) >= 4 and "".join(texts) == final.content[0].text
    assert final.usage.cache_read_input_tokens == 7
    assert up.billed[0]["input"] == final.usage.input_tokens + 7
    assert up.billed[0]["output"] == final.usage.output_tokens

    raw = http.post(
        "/v1/messages",
        json={"model": "claude-haiku-4-5", "max_tokens": 5, "messages": user("x"), "stream": True},
    )
    assert raw.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert raw.headers["cache-control"] == "no-cache"
    assert raw.headers["request-id"].startswith("req_")
    assert b'event: ping\ndata: {"type": "ping"}\n\n' in raw.content
    assert raw.content.startswith(b"event: message_start\n")
    assert raw.content.rstrip().endswith(b"}") and b"event: message_stop\n" in raw.content
    delta = json.loads(next(d for d in sse_data(raw.content) if "message_delta" in d))
    assert set(delta["usage"]) == {
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "output_tokens",
    }


def test_anthropic_tool_use(claude: anthropic.Anthropic) -> None:
    tools: Any = [
        {
            "name": "get_weather",
            "description": "weather",
            "input_schema": {
                "type": "object",
                "properties": {"location": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["location", "days"],
            },
        }
    ]
    m = claude.messages.create(
        model="claude-sonnet-4-6", max_tokens=64, tools=tools, messages=user("weather in Paris")
    )
    assert m.stop_reason == "tool_use" and m.content[0].type == "tool_use"
    expected = {"location": "weather in Paris", "days": 3}
    assert m.content[0].input == expected
    with claude.messages.stream(
        model="claude-sonnet-4-6", max_tokens=64, tools=tools, messages=user("weather in Paris")
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[0].input == expected


def test_anthropic_mid_stream_error(claude: anthropic.Anthropic, up: FakeUpstream) -> None:
    stream = claude.messages.stream(
        model="claude-sonnet-4-6",
        max_tokens=64,
        messages=user("hi"),
        extra_headers={"x-fake-stream-error": "1"},
    )
    with pytest.raises(anthropic.APIStatusError) as info, stream as events:
        events.get_final_message()
    assert "overloaded_error" in str(info.value)
    assert up.billed == []


# ---- Gemini -----------------------------------------------------------------------------------

GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "tell me a story"}]}]}


def test_gemini_sse_is_crlf(http: httpx2.Client, up: FakeUpstream) -> None:
    r = http.post(
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        params={"alt": "sse", "key": "AIza-test"},
        json=GEMINI_BODY,
    )
    assert r.headers["content-type"] == "text/event-stream"
    assert r.headers["content-disposition"] == "attachment"
    assert r.content.startswith(b"data: {") and r.content.endswith(b"}\r\n\r\n")
    assert b"event:" not in r.content and b"[DONE]" not in r.content
    chunks = [json.loads(d) for d in sse_data(r.content, b"\r\n\r\n")]
    assert len(chunks) >= 4
    text = "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks)
    assert text.startswith("Echo: tell me a story")
    last = chunks[-1]
    assert last["candidates"][0]["finishReason"] == "STOP"
    usage = last["usageMetadata"]
    assert usage["totalTokenCount"] == (
        usage["promptTokenCount"] + usage["candidatesTokenCount"] + usage["thoughtsTokenCount"]
    )
    assert up.billed[0] == {
        "provider": "gemini",
        "model": "gemini-2.5-flash",
        "input": usage["promptTokenCount"],
        "output": usage["candidatesTokenCount"] + 64,
        "cache_read": 0,
        "cache_write": 0,
        "reasoning": 64,
    }
    assert up.requests[-1].query == "alt=sse&key=AIza-test"


def test_gemini_json_array_stream_and_generate(http: httpx2.Client, up: FakeUpstream) -> None:
    r = http.post(
        "/v1/models/gemini-2.0-flash:streamGenerateContent",
        json=GEMINI_BODY,
        headers={"x-goog-api-key": "AIza-test"},
    )
    assert r.content.startswith(b"[{\n") and b"\n,\r\n{" in r.content
    assert r.content.endswith(b"}\n]")
    assert "content-encoding" not in r.headers
    array = json.loads(r.content)
    assert len(array) >= 4 and "thoughtsTokenCount" not in array[-1]["usageMetadata"]

    g = http.post(
        "/v1beta/models/gemini-2.0-flash:generateContent",
        json=GEMINI_BODY,
        headers={"x-fake-cached-tokens": "3"},
    )
    assert g.headers["content-type"] == "application/json; charset=UTF-8"
    assert g.headers["content-encoding"] == "gzip"
    assert g.text.endswith("}\n")
    usage = g.json()["usageMetadata"]
    assert usage["cachedContentTokenCount"] == 3
    assert usage["promptTokenCount"] == 4 + 7 + 3
    assert up.billed[-1]["input"] == 14 and up.billed[-1]["cache_read"] == 3


# ---- errors, knobs, transport -----------------------------------------------------------------


def test_error_statuses(
    oai: openai.OpenAI, claude: anthropic.Anthropic, http: httpx2.Client, up: FakeUpstream
) -> None:
    with pytest.raises(openai.RateLimitError) as oe:
        oai.chat.completions.create(
            model="gpt-4o", messages=user("x"), extra_headers={"x-fake-status": "429"}
        )
    assert oe.value.response.headers["retry-after"] == "0"
    body = oe.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}

    with pytest.raises(openai.AuthenticationError):
        oai.chat.completions.create(
            model="gpt-4o", messages=user("x"), stream=True, extra_headers={"x-fake-status": "401"}
        )

    with pytest.raises(anthropic.OverloadedError) as ae:
        claude.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=5,
            messages=user("x"),
            extra_headers={"x-fake-status": "529"},
        )
    err = ae.value.response.json()
    assert err["type"] == "error" and err["error"]["type"] == "overloaded_error"
    assert err["request_id"].startswith("req_")

    g = http.post(
        "/v1beta/models/gemini-2.5-flash:generateContent",
        json=GEMINI_BODY,
        headers={"x-fake-status": "503"},
    )
    assert g.status_code == 503 and g.headers["retry-after"] == "0"
    assert g.json() == {
        "error": {"code": 503, "message": "Fake upstream error 503.", "status": "UNAVAILABLE"}
    }

    nf = http.post("/nope/v2/things", json={})
    assert nf.status_code == 404 and set(nf.json()["error"]) == {"message", "type", "param", "code"}
    assert up.billed == []


def test_cut_stream_raises_in_client(
    oai: openai.OpenAI, claude: anthropic.Anthropic, up: FakeUpstream
) -> None:
    received = []
    with pytest.raises((openai.APIError, httpx2.HTTPError)):
        for chunk in oai.chat.completions.create(
            model="gpt-4o-mini",
            messages=user("a b c"),
            stream=True,
            extra_headers={"x-fake-cut-after": "3"},
        ):
            received.append(chunk)
    assert len(received) == 3
    stream = claude.messages.stream(
        model="claude-sonnet-4-6",
        max_tokens=5,
        messages=user("x"),
        extra_headers={"x-fake-cut-after": "4"},
    )
    with pytest.raises((anthropic.APIError, httpx2.HTTPError)), stream as events:
        events.get_final_message()
    assert up.billed == []


def test_events_arrive_incrementally(http: httpx2.Client) -> None:
    pause = 0.08
    arrivals = []
    with http.stream(
        "POST",
        "/v1/chat/completions",
        json={"model": "m", "messages": user("one two three four five"), "stream": True},
        headers={"x-fake-delay-ms": str(int(pause * 1000))},
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic())
    assert len(arrivals) >= 8
    # Sent as a whole at the end, the events would arrive together; sent one by one, most
    # gaps keep the pause. Load only lengthens gaps, so this cannot fail for being slow.
    gaps = sorted(b - a for a, b in itertools.pairwise(arrivals))
    assert gaps[len(gaps) // 2] > 0.5 * pause, gaps


def test_gzip_request_bodies_and_response_knob(http: httpx2.Client, up: FakeUpstream) -> None:
    payload = json.dumps({"model": "m", "messages": user("zipped words here")}).encode()
    r = http.post(
        "/v1/chat/completions",
        content=gzip.compress(payload),
        headers={
            "content-encoding": "gzip",
            "content-type": "application/json",
            "x-fake-gzip": "0",
        },
    )
    assert r.status_code == 200 and "content-encoding" not in r.headers
    assert up.requests[-1].body == payload
    assert up.requests[-1].json["messages"][0]["content"] == "zipped words here"
    assert r.json()["choices"][0]["message"]["content"].startswith("Echo: zipped words here")

    def chunks() -> Iterator[bytes]:  # no length known: httpx2 sends transfer-encoding: chunked
        yield payload[:10]
        yield payload[10:]

    r2 = http.post(
        "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r2.status_code == 200
    assert up.requests[-1].header("transfer-encoding") == "chunked"
    assert up.requests[-1].body == payload


def test_body_bytes_padding(http: httpx2.Client, up: FakeUpstream) -> None:
    r = http.post(
        "/v1/messages",
        json={"model": "claude-x", "max_tokens": 5, "messages": user("big")},
        headers={"x-fake-body-bytes": "300000"},
    )
    assert len(r.content) >= 300_000
    assert int(r.headers["content-length"]) < len(r.content)  # gzip on the wire
    body = r.json()
    assert body["usage"]["output_tokens"] == len(body["content"][0]["text"].split())
    assert up.billed[0]["output"] == body["usage"]["output_tokens"]


def test_keepalive_and_connection_count(up: FakeUpstream) -> None:
    with httpx2.Client(verify=up.ssl_context()) as client:
        for _ in range(5):
            client.post(up.url + "/v1/chat/completions", json={"model": "m", "messages": user("k")})
    assert up.connections == 1 and len(up.requests) == 5


def test_hundred_concurrent_clients(up: FakeUpstream) -> None:
    context = up.ssl_context()

    def one(i: int) -> str:
        with httpx2.Client(verify=context, timeout=20) as client:
            r = client.post(
                up.url + "/v1/chat/completions",
                json={"model": "m", "messages": user(f"client {i}")},
                headers={"x-fake-delay-ms": "300"},
            )
            return str(r.json()["choices"][0]["message"]["content"])

    start = time.monotonic()
    one(-1)
    single = time.monotonic() - start
    up.reset()
    start = time.monotonic()
    with ThreadPoolExecutor(100) as pool:
        answers = list(pool.map(one, range(100)))
    elapsed = time.monotonic() - start
    assert len(set(answers)) == 100
    assert up.connections == 100 and len(up.billed) == 100
    # One after another, 100 calls would take 100 times one call (each waits 300 ms); served
    # concurrently, a few times. A ratio to one call timed just before, not a time limit.
    assert elapsed < 25 * single, f"100 concurrent calls took {elapsed / single:.1f}x one call"


def test_plain_http_stop_closes_idle_connections_and_is_idempotent() -> None:
    up = FakeUpstream(tls=False).start()
    assert up.url.startswith("http://127.0.0.1:")
    # An idle keep-alive connection must not hold up stop().
    idle = socket.create_connection(("127.0.0.1", up.port))
    idle.sendall(
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 31\r\n\r\n"
        b'{"model":"m","input":"a b c d"}'
    )
    assert b"200 OK" in idle.recv(65536)
    # stop() must close the idle connection rather than wait for it (a hang would meet the
    # test's timeout); the client then reads the rest of the response and the end of the stream
    # (a TimeoutError here: the connection was left open).
    up.stop()
    up.stop()
    idle.settimeout(10)
    while idle.recv(65536):
        pass
    idle.close()


def test_build_reply_and_decode_are_pure() -> None:
    headers = {"x-fake-cut-after": "2", "x-fake-delay-ms": "5"}
    reply = build_reply(
        "POST",
        "/openai/v1/chat/completions",
        "",
        headers.get,
        b'{"model":"m","stream":true,"messages":[{"role":"user","content":"x"}]}',
    )
    assert reply.cut_after == 2 and reply.delay_s == 0.005 and reply.events
    assert Knobs.from_headers({"x-fake-status": "nope"}.get).status is None
    assert decode_body(gzip.compress(b"abc"), "gzip") == b"abc"
    with pytest.raises(ValueError):
        decode_body(b"abc", "compress")


def test_cli_prints_url_and_cert(tmp_path: Path) -> None:
    script = Path(__file__).with_name("fakeupstream.py")
    proc = subprocess.Popen(
        [sys.executable, str(script), "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        cert = proc.stdout.readline().split()[-1]
        context = ssl.create_default_context(cafile=cert)
        r = httpx2.post(url + "/v1/embeddings", json={"model": "m", "input": "x"}, verify=context)
        assert r.status_code == 200
    finally:
        proc.terminate()
        proc.wait(5)


def test_async_clients_share_server(up: FakeUpstream) -> None:
    """Many threads, one keep-alive client: the lock-protected lists stay consistent."""
    with httpx2.Client(verify=up.ssl_context(), limits=httpx2.Limits(max_connections=8)) as c:
        threads = [
            threading.Thread(
                target=lambda: c.post(up.url + "/v1/embeddings", json={"model": "m", "input": "a"})
            )
            for _ in range(40)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(up.requests) == 40 and len(up.billed) == 40 and up.connections <= 8
