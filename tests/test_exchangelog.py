"""The exchange log: record format, packing, conversations, filters, stats, retention, JSONL.

`make_exchange` builds realistic exchanges (recorded provider bodies from tests/fixtures, with
API keys planted in headers, query strings and bodies); test_cli_log.py reuses it.
"""

from __future__ import annotations

import io
import json
import re
import stat
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from llmreel.core.exchange import Exchange, RecordingRef
from llmreel.core.ids import id_floor, id_time, new_id
from llmreel.core.redact import fingerprint, mask_headers, mask_query
from llmreel.log import record as logrecord
from llmreel.log.exchangelog import AmbiguousExchange, ExchangeLog, UnknownExchange
from llmreel.log.jsonl import JsonlSink
from llmreel.log.packing import LogRecordError, pack_exchange, unpack_content, unpack_record
from llmreel.log.query import LogFilter, parse_duration, parse_when, percentile, stats
from llmreel.log.record import exchange_record, strip_bodies
from llmreel.providers import classify, conversation, summarize
from llmreel.storage.lmdbstore import LmdbStore
from llmreel.storage.records import Recording
from tests.leaks import readable

FIXTURES = Path(__file__).parent / "fixtures"

# Key-shaped secrets, planted everywhere an agent might put one. None may ever be written.
OPENAI_KEY = "sk-proj-Zq8xT3vB7nM2kL9pR4sW6yU1hJ5gF0dA"
ANTHROPIC_KEY = "sk-ant-api03-Yw4eR7tU2iO9pA3sD6fG1hJ8kL5zX0cV"
GOOGLE_KEY = "AIzaSyC9xK2mN7bV4cX1zL8kJ5hG3fD6sA0qW2e"
SECRETS = (OPENAI_KEY, ANTHROPIC_KEY, GOOGLE_KEY)

SYSTEM_PROMPT = "You are a terse geography tutor."


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def _json(obj: Any) -> bytes:
    return orjson.dumps(obj)


# kind -> (host, path, query, request body, response fixture, response content type)
KINDS: dict[str, tuple[str, str, str, dict[str, Any], str, str]] = {
    "openai-chat": (
        "api.openai.com", "/v1/chat/completions", "",
        {"model": "gpt-4o-mini", "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"Summarise the cached doc. (my key is {OPENAI_KEY})"},
        ]},
        "openai-chat.json", "application/json",
    ),
    "openai-chat-stream": (
        "api.openai.com", "/v1/chat/completions", "",
        {"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True},
         "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": [{"type": "text", "text": "What is the capital of the UK?"}]},
        ]},
        "openai-chat-stream.sse", "text/event-stream; charset=utf-8",
    ),
    "openai-chat-tools-stream": (
        "api.openai.com", "/v1/chat/completions", "",
        {"model": "gpt-4o-mini", "stream": True, "tools": [
            {"type": "function", "function": {"name": "get_capital", "parameters": {}}}],
         "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": "Capital of the UK? Use the tool."},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_prev1", "type": "function",
                 "function": {"name": "get_capital", "arguments": "{\"country\":\"France\"}"}}]},
            {"role": "tool", "tool_call_id": "call_prev1", "content": "Paris"},
            {"role": "user", "content": "Now the UK."},
        ]},
        "openai-chat-tools-stream.sse", "text/event-stream; charset=utf-8",
    ),
    "openai-responses-stream": (
        "api.openai.com", "/v1/responses", "",
        {"model": "gpt-4.1-nano", "stream": True, "instructions": SYSTEM_PROMPT,
         "input": "What is 2 + 2?"},
        "openai-responses-stream.sse", "text/event-stream; charset=utf-8",
    ),
    "openai-responses-tools-stream": (
        "api.openai.com", "/v1/responses", "",
        {"model": "gpt-4o", "stream": True, "instructions": SYSTEM_PROMPT,
         "tools": [{"type": "function", "name": "get_capital", "parameters": {}}],
         "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Capital of Spain?"}]},
            {"type": "function_call", "call_id": "call_es", "name": "get_capital",
             "arguments": "{\"country\":\"Spain\"}"},
            {"type": "function_call_output", "call_id": "call_es", "output": "Madrid"},
            {"role": "user", "content": "And France?"},
        ]},
        "openai-responses-tools-stream.sse", "text/event-stream; charset=utf-8",
    ),
    "anthropic-tools-stream": (
        "api.anthropic.com", "/v1/messages", "",
        {"model": "claude-3-5-sonnet-20240620", "max_tokens": 1024, "stream": True,
         "system": [{"type": "text", "text": SYSTEM_PROMPT}],
         "tools": [{"name": "get_weather", "input_schema": {}}, {"name": "get_time", "input_schema": {}}],
         "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "The user wants Paris weather.", "signature": "x"},
                {"type": "tool_use", "id": "toolu_prev", "name": "get_weather",
                 "input": {"location": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_prev", "content": "18°C, sunny"},
                {"type": "text", "text": f"(debug: x-api-key {ANTHROPIC_KEY})"},
                {"type": "text", "text": "Now weather and time in San Francisco."}]},
        ]},
        "anthropic-tools-stream.sse", "text/event-stream; charset=utf-8",
    ),
    "anthropic": (
        "api.anthropic.com", "/v1/messages", "",
        {"model": "claude-3-5-haiku-20241022", "max_tokens": 256, "system": SYSTEM_PROMPT,
         "messages": [{"role": "user", "content": "What time is it in Los Angeles?"}]},
        "anthropic-messages-tool-use.json", "application/json",
    ),
    "gemini-stream": (
        "generativelanguage.googleapis.com",
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent", f"alt=sse&key={GOOGLE_KEY}",
        {"systemInstruction": {"parts": [{"text": SYSTEM_PROMPT}]},
         "contents": [
            {"role": "user", "parts": [{"text": "What's the weather in Rome?"},
                                       {"text": f"My Maps key: {GOOGLE_KEY}"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "get_weather",
                                                               "response": {"temp_c": 21}}}]},
            {"role": "user", "parts": [{"text": "Count from 1 to 30."}]},
         ],
         "tools": [{"functionDeclarations": [{"name": "get_weather"}]}]},
        "gemini-stream.sse", "text/event-stream",
    ),
    "embeddings": (
        "api.openai.com", "/v1/embeddings", "",
        {"model": "text-embedding-ada-002", "input": ["Tell me a joke."], "encoding_format": "base64"},
        "openai-embeddings.json", "application/json",
    ),
    "error": (
        "api.openai.com", "/v1/chat/completions", "",
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]},
        "errors-openai-401.json", "application/json; charset=utf-8",
    ),
}  # fmt: skip


def make_exchange(kind: str = "openai-chat-stream", **overrides: Any) -> Exchange:
    """A finished exchange as the recorder builds it: headers and URL masked, bodies raw."""
    host, path, query, request, response_file, content_type = KINDS[kind]
    endpoint = classify("POST", host, path)
    assert endpoint is not None
    body = fixture(response_file)
    status = 401 if kind == "error" else 200
    if kind == "error":  # an upstream error that echoes the key, as some gateways do
        body = body.replace(b"sk-abcde", OPENAI_KEY.encode()[:20])
    summary = summarize(endpoint, body, content_type)
    url = f"https://{host}{path}"
    if query:
        from urllib.parse import parse_qsl, urlencode

        url += "?" + urlencode(mask_query(parse_qsl(query)))
    raw_headers = [
        ("host", host),
        ("content-type", "application/json"),
        ("authorization", f"Bearer {OPENAI_KEY}"),
        ("x-api-key", ANTHROPIC_KEY),
        ("x-goog-api-key", GOOGLE_KEY),
        ("user-agent", "OpenAI/Python 1.50.0"),
    ]
    response_headers = [("content-type", content_type), ("set-cookie", "__cf_bm=abc; path=/")]
    started = overrides.pop("started", time.time())
    fields: dict[str, Any] = {
        "id": new_id(started + overrides.get("duration_s", 0.8)),
        "started": started,
        "method": "POST",
        "url": url,
        "endpoint": endpoint,
        "cache": "miss",
        "namespace": "default",
        "key": "3f9c" * 8,
        "model": request.get("model") or path.split("/models/")[-1].split(":")[0],
        "response_model": summary.model,
        "status": status,
        "error_type": "401" if kind == "error" else None,
        "duration_s": 0.8,
        "upstream_s": 0.79,
        "ttfc_s": 0.2 if "stream" in kind else None,
        "stream": "stream" in kind,
        "usage": summary.usage,
        "cost_usd": 0.00042 if summary.usage else None,
        "recorded": status == 200,
        "client": "127.0.0.1:51234",
        "listener": "regular",
        "request_headers": mask_headers(raw_headers),
        "response_headers": mask_headers(response_headers),
        "request_body": _json(request),
        "response_body": body,
        "summary": summary,
    }
    fields.update(overrides)
    return Exchange(**fields)


def assert_no_secrets(data: bytes | str, where: str) -> None:
    blob = data.encode() if isinstance(data, str) else data
    for secret in SECRETS:
        assert secret.encode() not in blob, f"{secret[:8]}... leaked into {where}"
        # Not even a long piece of it (a truncated key is still a key).
        assert secret.encode()[4:24] not in blob, f"part of {secret[:8]}... leaked into {where}"


# --- the record -------------------------------------------------------------------------------

REQUIRED = ("id", "time", "method", "url", "status", "provider", "model", "operation", "cache",
            "namespace", "input_tokens", "output_tokens", "cost_usd", "duration_s", "ttfc_s",
            "error")  # fmt: skip
ALSO = ("v", "key", "response_model", "usage", "upstream_s", "stream", "client", "listener",
        "recorded", "error_type", "request_headers", "response_headers", "request_body",
        "response_body", "events", "assembled")  # fmt: skip


def test_record_has_the_documented_fields() -> None:
    ex = make_exchange("openai-chat-stream", cost_usd=0.00123)
    record = exchange_record(ex)
    for name in REQUIRED + ALSO:
        assert name in record, name
    assert record["v"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
    assert record["provider"] == "openai" and record["operation"] == "chat"
    assert record["api"] == "openai.chat"
    assert (record["input_tokens"], record["output_tokens"]) == (78, 9)
    assert record["usage"] == {"input": 78, "output": 9, "cache_read": 0, "cache_write": 0,
                               "reasoning": 0}  # fmt: skip
    assert record["cost_usd"] == 0.00123 and record["ttfc_s"] == 0.2
    assert record["request_body"]["messages"][0]["content"] == SYSTEM_PROMPT
    assert record["request_body_format"] == "json"
    # SSE: the raw event text, the parsed events, and the assembled answer.
    assert record["response_body_format"] == "sse"
    assert record["response_body"] == fixture("openai-chat-stream.sse").decode()
    assert record["events"][0]["event"] == "message"
    assert record["events"][1]["data"]["choices"][0]["delta"]["content"] == "The"
    assert record["events"][-1] == {"event": "message", "data": "[DONE]"}
    assert record["assembled"]["text"] == "The capital of the UK is London."
    assert record["assembled"]["finish_reason"] == "stop"
    json.dumps(record)  # JSON-ready as it is


def test_record_without_bodies_is_the_record_minus_content() -> None:
    ex = make_exchange("anthropic-tools-stream")
    lean = exchange_record(ex, bodies=False)
    assert lean == strip_bodies(exchange_record(ex))
    for name in ("request_body", "response_body", "events", "assembled"):
        assert name not in lean
    assert lean["request_headers"] and lean["response_body_size"] > 0


def test_replays_get_an_assembled_answer_too() -> None:
    # Hits reach the log without a summary; the record reads the body itself.
    ex = make_exchange("anthropic-tools-stream", summary=None, cache="hit")
    assembled = exchange_record(ex)["assembled"]
    assert assembled["text"].startswith("Certainly! I can help")
    assert [c["name"] for c in assembled["tool_calls"]] == ["get_weather", "get_time"]


@pytest.mark.parametrize(
    ("body", "fmt"),
    [
        (b"", None),
        (b"\xff\xfe\x00binary\x80" + OPENAI_KEY.encode(), "base64"),
        (b"<html>502 Bad Gateway</html>", "text"),
        (b'{"truncated": ', "text"),
        (b"[" * 5000 + b"]" * 5000, "text"),  # nested deeper than orjson parses
        (b'{"big": 123456789012345678901234567890}', None),
        (b'{"lone": "\\ud800"}', None),
        ("héllo wörld".encode() + b"\xc3", "base64"),
    ],
)
def test_odd_bodies_never_raise(body: bytes, fmt: str | None) -> None:
    ex = make_exchange("openai-chat", request_body=body, response_body=body, summary=None)
    record = exchange_record(ex)
    if fmt is not None:
        assert record["request_body_format"] == fmt
    packed = pack_exchange(ex)
    assert unpack_record(packed) == orjson.loads(orjson.dumps(record))
    assert_no_secrets(readable(packed), "a packed record")
    assert_no_secrets(orjson.dumps(record), "a record")


def test_huge_bodies_are_kept_truncated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logrecord, "MAX_BODY_BYTES", 1000)
    text = ("é" * 800).encode()  # 1600 bytes: the cut falls inside a character
    record = exchange_record(make_exchange("openai-chat", request_body=text))
    assert record["request_body_truncated"] is True
    assert record["request_body_format"] == "text"
    assert record["request_body"] == "é" * 500
    assert record["request_body_size"] == 1600


def test_binary_bodies_are_scrubbed_before_base64() -> None:
    import base64

    body = b"\x00\x01" + f"key={OPENAI_KEY}".encode() + b"\xff"
    record = exchange_record(make_exchange("openai-chat", request_body=body))
    decoded = base64.b64decode(record["request_body"])
    assert b"[redacted " in decoded and OPENAI_KEY.encode() not in decoded
    assert decoded.startswith(b"\x00\x01key=") and decoded.endswith(b"\xff")


@pytest.mark.parametrize("kind", list(KINDS))
def test_keys_in_bodies_headers_url_and_errors_are_masked(kind: str) -> None:
    ex = make_exchange(kind, error=f"upstream said: bad key {GOOGLE_KEY}")
    record = exchange_record(ex)
    blob = orjson.dumps(record)
    assert_no_secrets(blob, "the record")
    assert_no_secrets(readable(pack_exchange(ex)), "the packed record")
    assert b"Bearer [redacted " in blob and b"[redacted " in blob
    if kind == "gemini-stream":
        assert "key=%5Bredacted" in record["url"]
        assert "My Maps key: [redacted " in str(record["request_body"])


def test_ids_carry_their_time() -> None:
    now = 1_750_000_000.25
    made = new_id(now)
    assert id_time(made) == pytest.approx(now, abs=0.001)
    assert id_floor(now) == made[:10]
    assert id_floor(now) + "0" * 16 <= made < id_floor(now + 0.0015)


def test_pack_keeps_heavy_fields_out_of_the_head() -> None:
    ex = make_exchange("openai-responses-stream")
    record = orjson.loads(orjson.dumps(exchange_record(ex)))
    packed = pack_exchange(ex)
    head = unpack_record(packed, heavy=False)
    assert "request_body" not in head and "events" not in head and "request_headers" not in head
    assert "_raw" not in head
    assert head["id"] == record["id"] and head["cost_usd"] == record["cost_usd"]
    assert unpack_record(packed) == record
    assert len(packed) < len(ex.request_body) + len(ex.response_body)  # compressed


@pytest.mark.parametrize(
    "data", [b"", b"LXL1", b"NOPE\x00\x00\x00\x00\x02{}", b"LXL1\x02\x00\x00\x00\x02{}garbage"]
)
def test_unpack_rejects_garbage(data: bytes) -> None:
    with pytest.raises(LogRecordError):
        unpack_record(data)


# --- conversations ----------------------------------------------------------------------------


def _parts(conv_messages: Any) -> list[tuple[str, str, str]]:
    return [(m.role, p.kind, p.text) for m in conv_messages for p in m.parts]


def test_conversation_openai_chat_with_tools() -> None:
    conv = conversation(exchange_record(make_exchange("openai-chat-tools-stream")))
    assert conv.system == (SYSTEM_PROMPT,)
    assert conv.tools == ("get_capital",)
    assert [m.role for m in conv.messages] == ["user", "assistant", "tool", "user"]
    call = conv.messages[1].parts[0]
    assert (call.kind, call.name, call.call_id, call.text) == (
        "tool_call", "get_capital", "call_prev1", '{"country":"France"}')  # fmt: skip
    result = conv.messages[2].parts[0]
    assert (result.kind, result.call_id, result.text) == ("tool_result", "call_prev1", "Paris")
    assert conv.response is not None and conv.finish_reason == "tool_calls"
    answer = conv.response.parts[0]
    assert (answer.kind, answer.name, answer.text) == (
        "tool_call",
        "get_capital",
        '{"country":"UK"}',
    )


def test_conversation_openai_responses() -> None:
    conv = conversation(exchange_record(make_exchange("openai-responses-tools-stream")))
    assert conv.system == (SYSTEM_PROMPT,)
    assert _parts(conv.messages) == [
        ("user", "text", "Capital of Spain?"),
        ("assistant", "tool_call", '{"country":"Spain"}'),
        ("tool", "tool_result", "Madrid"),
        ("user", "text", "And France?"),
    ]
    assert conv.response is not None
    assert conv.response.parts[0].name == "get_capital"
    simple = conversation(exchange_record(make_exchange("openai-responses-stream")))
    assert _parts(simple.messages) == [("user", "text", "What is 2 + 2?")]
    assert simple.response is not None and simple.response.parts[0].text == "2 + 2 equals 4."


def test_conversation_anthropic_blocks() -> None:
    conv = conversation(exchange_record(make_exchange("anthropic-tools-stream")))
    assert conv.system == (SYSTEM_PROMPT,)
    assert conv.tools == ("get_weather", "get_time")
    assert _parts(conv.messages) == [
        ("user", "text", "Weather in Paris?"),
        ("assistant", "thinking", "The user wants Paris weather."),
        ("assistant", "tool_call", '{"location":"Paris"}'),
        ("user", "tool_result", "18°C, sunny"),
        ("user", "text", f"(debug: x-api-key [redacted {fingerprint(ANTHROPIC_KEY)}])"),
        ("user", "text", "Now weather and time in San Francisco."),
    ]
    assert conv.response is not None
    kinds = [(p.kind, p.name) for p in conv.response.parts]
    assert kinds == [("text", None), ("tool_call", "get_weather"), ("tool_call", "get_time")]
    plain = conversation(exchange_record(make_exchange("anthropic")))
    assert plain.system == (SYSTEM_PROMPT,)


def test_conversation_gemini_parts() -> None:
    conv = conversation(exchange_record(make_exchange("gemini-stream")))
    assert conv.system == (SYSTEM_PROMPT,)
    assert conv.tools == ("get_weather",)
    assert _parts(conv.messages) == [
        ("user", "text", "What's the weather in Rome?"),
        ("user", "text", f"My Maps key: [redacted {fingerprint(GOOGLE_KEY)}]"),
        ("model", "tool_call", '{"city":"Rome"}'),
        ("user", "tool_result", '{"temp_c":21}'),
        ("user", "text", "Count from 1 to 30."),
    ]
    assert conv.response is not None
    assert conv.response.parts[0].text.startswith("1\n2\n3") and conv.finish_reason == "STOP"


def test_conversation_embeddings() -> None:
    conv = conversation(exchange_record(make_exchange("embeddings")))
    assert _parts(conv.messages) == [("input", "text", "Tell me a joke.")]
    assert conv.response is not None
    assert conv.response.parts[0].text.startswith("1 embedding (1536 dimensions)")


def test_conversation_shows_a_gateway_error_page_as_it_came() -> None:
    page = b"<html>502 Bad Gateway</html>"
    ex = make_exchange("openai-chat", status=502, response_body=page, summary=None)
    response = conversation(exchange_record(ex)).response
    assert response is not None
    assert [(p.text, p.is_error) for p in response.parts] == [(page.decode(), True)]


def test_conversation_of_odd_bodies_does_not_raise() -> None:
    for body in (b"", b"not json", b"[1,2]", b'{"messages": "nope", "contents": [1, null]}'):
        for kind in KINDS:
            conversation(exchange_record(make_exchange(kind, request_body=body,
                                                       response_body=body, summary=None)))  # fmt: skip


# --- filters, search, stats -------------------------------------------------------------------


def test_parse_durations_and_times() -> None:
    assert parse_duration("90") == 90 and parse_duration("10m") == 600
    assert parse_duration("2h") == 7200 and parse_duration("7d") == 7 * 86400
    now = 1_750_000_000.0
    assert parse_when("10m", now) == now - 600
    assert parse_when("2025-06-15T15:06:40Z", now) == 1_750_000_000.0
    assert parse_when("2025-06-15T17:06:40+02:00", now) == 1_750_000_000.0
    for bad in ("yesterday", "10 parsecs", ""):
        with pytest.raises(ValueError, match="10m"):
            parse_when(bad, now)
    with pytest.raises(ValueError, match="status"):
        LogFilter(statuses=("teapot",))


def test_filters_on_heads() -> None:
    now = time.time()
    records = {
        "old_hit": exchange_record(make_exchange("openai-chat", started=now - 7200, cache="hit")),
        "claude": exchange_record(make_exchange("anthropic", started=now - 60, namespace="ci")),
        "err": exchange_record(make_exchange("error", started=now - 30)),
        "cut": exchange_record(make_exchange("openai-chat-stream", started=now - 10, status=None,
                                             error="stream cut", error_type="stream_cut")),
    }  # fmt: skip

    def names(**kw: Any) -> set[str]:
        flt = LogFilter(**kw)
        return {n for n, r in records.items() if flt.matches_head(r)}

    assert names() == set(records)
    assert names(since=now - 3600) == {"claude", "err", "cut"}
    assert names(until=now - 3600) == {"old_hit"}
    assert names(models=("gpt-4o*",)) == {"old_hit", "err", "cut"}
    assert names(models=("CLAUDE-3-5-HAIKU-20241022",)) == {"claude"}
    assert names(models=("gpt-4o-mini-2024-07-18",)) == {"old_hit", "cut"}  # the answering model
    assert names(providers=("anthropic",)) == {"claude"}
    assert names(caches=("hit",)) == {"old_hit"}
    assert names(statuses=("200",)) == {"old_hit", "claude"}
    assert names(statuses=("4xx",)) == {"err"}
    assert names(statuses=("error",)) == {"err", "cut"}
    assert names(statuses=("2xx", "error")) == set(records)
    assert names(namespaces=("ci",)) == {"claude"}


def test_grep_searches_prompts_and_answers_not_json_syntax() -> None:
    chat = exchange_record(make_exchange("openai-chat-stream"))
    gemini = exchange_record(make_exchange("gemini-stream"))

    def hits(text: str) -> list[bool]:
        flt = LogFilter(grep=text)
        return [flt.matches_content(chat), flt.matches_content(gemini)]

    assert hits("capital OF the uk") == [True, False]  # the prompt, any case
    assert hits("london") == [True, False]  # the streamed answer
    assert hits("rome") == [False, True]
    assert hits("geography tutor") == [True, True]  # system prompts count
    assert hits("role") == [False, False]  # keys are not content
    assert hits("choices") == [False, False]  # nor is SSE framing


def test_percentile_is_nearest_rank() -> None:
    values = [0.5, 0.1, 0.4, 0.2, 0.3, 1.0, 0.6, 0.9, 0.8, 0.7]
    assert percentile(values, 50) == 0.5
    assert percentile(values, 95) == 1.0
    assert percentile(values, 90) == 0.9
    assert percentile([3.0], 95) == 3.0
    assert percentile([], 50) is None


def test_stats_computed_by_hand() -> None:
    def rec(
        cache: str, duration: float, cost: float | None, tokens: tuple[int, int], **kw: Any
    ) -> dict[str, Any]:
        return {"provider": "openai", "model": "gpt-4o", "cache": cache, "duration_s": duration,
                "cost_usd": cost, "input_tokens": tokens[0], "output_tokens": tokens[1],
                "status": 200, **kw}  # fmt: skip

    records = [
        rec("miss", 2.0, 0.010, (100, 10)),
        rec("miss", 4.0, 0.020, (200, 20)),
        rec("hit", 0.01, 0.010, (100, 10)),
        rec("hit", 0.02, 0.020, (200, 20)),
        rec("hit", 0.03, 0.030, (300, 30)),
        rec("offline_miss", 0.005, None, (0, 0), status=412),
        rec("passthrough", 1.0, 0.005, (50, 5)),
        {"provider": "anthropic", "model": "claude", "cache": "miss", "duration_s": 3.0,
         "cost_usd": 0.5, "input_tokens": 1000, "output_tokens": 100, "status": 529},
    ]  # fmt: skip
    rows, total = stats(records)
    assert [(r.provider, r.model) for r in rows] == [("anthropic", "claude"), ("openai", "gpt-4o")]
    openai = rows[1].as_dict()
    assert openai["requests"] == 7 and openai["hits"] == 3 and openai["errors"] == 1
    assert openai["input_tokens"] == 350 and openai["output_tokens"] == 35  # billed only
    assert openai["cost_usd"] == pytest.approx(0.035)
    assert openai["saved_usd"] == pytest.approx(0.06)
    assert openai["hit_ratio"] == pytest.approx(3 / 6)  # passthrough never looked
    # durations sorted: .005 .01 .02 .03 1 2 4 -> p50 = 4th, p95 = 7th
    assert openai["p50_s"] == 0.03 and openai["p95_s"] == 4.0
    assert total.requests == 8 and total.errors == 2
    assert total.cost_usd == pytest.approx(0.535)
    # .005 .01 .02 .03 1 2 3 4 -> p50 = ceil(0.5 * 8) = 4th, p95 = ceil(0.95 * 8) = 8th
    assert total.p50_s == 0.03 and total.p95_s == 4.0


# --- the log in a store -----------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with LmdbStore(tmp_path / "store") as s:
        yield s


def test_append_then_get_iter_newest_first(store: LmdbStore) -> None:
    exchange_log = ExchangeLog(store)
    now = time.time()
    exchanges = [make_exchange(kind, started=now - 100 + i) for i, kind in
                 enumerate(["openai-chat", "anthropic", "gemini-stream", "embeddings"])]  # fmt: skip
    for ex in exchanges:
        exchange_log.append(ex)
    exchange_log.flush()
    assert exchange_log.count() == 4
    ids = [r["id"] for r in exchange_log.iter()]
    assert ids == [ex.id for ex in reversed(exchanges)]
    assert [r["id"] for r in exchange_log.iter(newest_first=False)] == ids[::-1]
    assert [r["id"] for r in exchange_log.iter(newest_first=False, after=ids[2])] == ids[:2][::-1]
    head = next(exchange_log.iter())
    assert "request_body" not in head  # listing decodes heads only
    full = exchange_log.get(exchanges[2].id)
    assert full["provider"] == "gemini" and full["assembled"]["text"].startswith("1\n2")
    assert exchange_log.get(exchanges[2].id[:-3].lower())["id"] == exchanges[2].id  # a prefix


def test_get_explains_unknown_and_ambiguous_ids(store: LmdbStore) -> None:
    exchange_log = ExchangeLog(store)
    started = time.time()
    for _ in range(3):
        exchange_log.append(make_exchange(started=started, duration_s=0.0))
    exchange_log.flush()
    with pytest.raises(UnknownExchange, match="llmreel log ls"):
        exchange_log.get("01ZZZZ")
    with pytest.raises(AmbiguousExchange, match="more characters"):
        exchange_log.get(id_floor(started)[:8])


def test_iter_skips_corrupt_entries(store: LmdbStore, caplog: pytest.LogCaptureFixture) -> None:
    exchange_log = ExchangeLog(store)
    exchange_log.append(make_exchange())
    exchange_log.flush()
    store.write_raw([(b"log", b"01ZZZZZZZZZZZZZZZZZZZZZZZZ", b"garbage")])
    assert len(list(exchange_log.iter())) == 1
    assert "corrupt" in caplog.text


def test_prune_and_retention(store: LmdbStore) -> None:
    now = time.time()
    clock = [now]
    exchange_log = ExchangeLog(store, retention_s=86400, clock=lambda: clock[0])
    old = [make_exchange(started=now - 3 * 86400 + i) for i in range(5)]
    recent = [make_exchange(started=now - 3600 + i) for i in range(3)]
    for ex in old + recent:
        store.write_raw([(b"log", ex.id.encode(), pack_exchange(ex))])
    assert exchange_log.prune(older_than_s=30 * 86400) == 0
    # The first append prunes past the retention, in the background.
    exchange_log.append(make_exchange())
    exchange_log.flush()
    assert exchange_log.count() == 4
    # ... and not again within the hour.
    store.write_raw([(b"log", old[0].id.encode(), pack_exchange(old[0]))])
    clock[0] += 60
    exchange_log.append(make_exchange())
    exchange_log.flush()
    assert exchange_log.count() == 6
    clock[0] += 3600
    exchange_log.append(make_exchange())
    exchange_log.flush()
    assert exchange_log.count() == 6  # old[0] gone, one more appended
    assert ExchangeLog(store, retention_s=None).prune() == 0  # kept forever
    assert exchange_log.prune(older_than_s=60) == 6  # the clock is an hour ahead now
    assert exchange_log.count() == 0


def test_stats_over_the_store(store: LmdbStore) -> None:
    exchange_log = ExchangeLog(store)
    for cost, cache in ((0.01, "miss"), (0.01, "hit"), (0.02, "miss")):
        exchange_log.append(make_exchange("openai-chat", cost_usd=cost, cache=cache))
    exchange_log.flush()
    rows, total = exchange_log.stats()
    assert len(rows) == 1 and rows[0].requests == 3
    assert total.cost_usd == pytest.approx(0.03) and total.saved_usd == pytest.approx(0.01)


def test_append_never_raises(store: LmdbStore, caplog: pytest.LogCaptureFixture) -> None:
    exchange_log = ExchangeLog(store)
    store.close()
    exchange_log.append(make_exchange())  # a closed store: logged, not raised
    assert "not saved" in caplog.text


# --- JSONL ------------------------------------------------------------------------------------


def test_jsonl_sink_appends_private_lines(tmp_path: Path) -> None:
    path = tmp_path / "exchanges.jsonl"
    sink = JsonlSink(str(path), bodies=False)
    sink.append(make_exchange("openai-chat-stream"))
    sink.append(make_exchange("error"))
    sink.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = JsonlSink(str(path), bodies=True)
    again.append(make_exchange("gemini-stream"))
    again.close()
    data = path.read_bytes()
    assert_no_secrets(data, "the JSONL file")
    lines = [json.loads(line) for line in data.splitlines()]
    assert len(lines) == 3
    for line in lines:
        for name in REQUIRED:
            assert name in line
    assert "request_body" not in lines[0] and lines[1]["status"] == 401
    assert lines[2]["assembled"]["text"].startswith("1\n2")


def test_jsonl_sink_to_stdout_and_unwritable_paths(tmp_path: Path) -> None:
    out = io.BytesIO()
    JsonlSink("-", stdout=out).append(make_exchange())
    assert json.loads(out.getvalue())["provider"] == "openai"
    with pytest.raises(OSError, match="--log-file"):
        JsonlSink(str(tmp_path / "missing" / "x.jsonl"))


@pytest.mark.parametrize("fixture", ["openai-chat", "openai-chat-stream", "openai-responses-stream", "anthropic-tools-stream", "gemini-stream", "embeddings", "error"])
def test_stored_raw_bodies_expand_to_the_same_record(store: LmdbStore, fixture: str) -> None:
    """The log stores bodies raw and parses them when read: the result is `exchange_record`'s."""
    ex = make_exchange(fixture)
    log = ExchangeLog(store)
    log.append(ex)
    log.flush()
    stored = log.get(ex.id)
    eager = json.loads(orjson.dumps(exchange_record(ex), default=str))
    assert json.loads(orjson.dumps(stored, default=str)) == eager


def _replayed(store: LmdbStore, fixture: str) -> Exchange:
    """A hit on a recording in `store`, as the engine accounts for it."""
    ex = make_exchange(fixture, cache="hit", recorded=False, upstream_s=None, cost_usd=None)
    rec = Recording(key=ex.key, namespace=ex.namespace, request={}, status=200,
                    headers=list(ex.response_headers), body=ex.response_body,
                    recorded_at=time.time())  # fmt: skip
    store.put(rec)
    ex.replayed = RecordingRef(rec.namespace, rec.key, rec.seq, rec.recorded_at)
    return ex


@pytest.mark.parametrize("fixture", ["openai-chat", "openai-chat-stream", "gemini-stream"])
def test_a_hit_refers_to_its_recording_and_reads_back_the_same(
    store: LmdbStore, fixture: str
) -> None:
    ex = _replayed(store, fixture)
    log = ExchangeLog(store)
    log.append(ex)
    log.flush()
    stored_value = store.get_raw(b"log", ex.id.encode())
    assert stored_value is not None
    assert unpack_record(stored_value, heavy=False)["response_body_size"] == len(ex.response_body)
    # The response body is not stored again: only the request is in the record's content.
    assert len(unpack_content(stored_value)) <= len(ex.request_body)  # scrubbed, never longer
    eager = json.loads(orjson.dumps(exchange_record(ex), default=str))
    assert json.loads(orjson.dumps(log.get(ex.id), default=str)) == eager
    [listed] = log.iter(content=True)
    assert json.loads(orjson.dumps(listed, default=str)) == eager


def test_a_hit_whose_recording_is_gone_says_so(store: LmdbStore) -> None:
    ex = _replayed(store, "openai-chat")
    log = ExchangeLog(store)
    log.append(ex)
    log.flush()
    assert "response_body_missing" not in log.get(ex.id)
    store.delete(ex.namespace, ex.key)
    record = log.get(ex.id)
    assert record["response_body"] is None and record["request_body"] is not None
    assert "no longer in the store" in record["response_body_missing"]
    assert record["response_body_size"] == len(ex.response_body)  # the head is intact


def test_a_hit_on_a_recording_replaced_before_the_write_keeps_its_body(store: LmdbStore) -> None:
    ex = _replayed(store, "openai-chat")
    assert ex.replayed is not None
    store.put(Recording(key=ex.key, namespace=ex.namespace, request={}, status=200, headers=[],
                        body=b"{}", recorded_at=ex.replayed.recorded_at + 1))  # fmt: skip
    log = ExchangeLog(store)
    log.append(ex)
    log.flush()
    store.delete(ex.namespace, ex.key)
    eager = json.loads(orjson.dumps(exchange_record(ex), default=str))
    assert json.loads(orjson.dumps(log.get(ex.id), default=str)) == eager


def test_ids_are_crockford_base32_of_their_bits() -> None:
    entropy = bytes(range(1, 11))
    made = new_id(1_700_000_000.123, entropy)
    value = (1_700_000_000_123 << 80) | int.from_bytes(entropy, "big")
    digits = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    expected = "".join(digits[(value >> (5 * i)) & 31] for i in reversed(range(26)))
    assert made == expected and len(made) == 26
    assert id_floor(1_700_000_000.123) == expected[:10]
