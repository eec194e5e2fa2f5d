"""Request classification and response summaries, checked against the recorded fixtures."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmreel.providers import (
    DEFAULT_HOSTS,
    Endpoint,
    HostMap,
    ResponseSummary,
    ToolCall,
    Usage,
    classify,
    parse_host_mappings,
    request_model,
    summarize,
    wants_stream,
)
from llmreel.providers.apis import WIRE_APIS, _summarize, wire_api

FIXTURES = Path(__file__).parent / "fixtures"
SSE = "text/event-stream; charset=utf-8"
JSON = "application/json"

OPENAI_CHAT = Endpoint("openai", "openai.chat", "chat", "openai")
OPENAI_RESPONSES = Endpoint("openai", "openai.responses", "chat", "openai")
OPENAI_EMBEDDINGS = Endpoint("openai", "openai.embeddings", "embeddings", "openai")
OPENAI_COMPLETIONS = Endpoint("openai", "openai.completions", "text_completion", "openai")
ANTHROPIC = Endpoint("anthropic", "anthropic.messages", "chat", "anthropic")
GEMINI = Endpoint("gemini", "gemini.generate", "generate_content", "gcp.gemini")
GEMINI_EMBED = Endpoint("gemini", "gemini.embed", "embeddings", "gcp.gemini")
ALL_ENDPOINTS = [
    OPENAI_CHAT,
    OPENAI_RESPONSES,
    OPENAI_EMBEDDINGS,
    OPENAI_COMPLETIONS,
    ANTHROPIC,
    GEMINI,
    GEMINI_EMBED,
]


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def summary_of(ep: Endpoint, name: str) -> ResponseSummary:
    return summarize(ep, fixture(name), SSE if name.endswith(".sse") else JSON)


# --- Usage ---------------------------------------------------------------------------------------


def test_usage_sum_and_dict() -> None:
    a = Usage(input=10, output=5, cache_read=3, cache_write=2, reasoning=1)
    b = Usage(input=1, output=1)
    assert a + b == Usage(11, 6, 3, 2, 1)
    assert sum([a, b], Usage()) == a + b
    assert a.as_dict() == {
        "input": 10,
        "output": 5,
        "cache_read": 3,
        "cache_write": 2,
        "reasoning": 1,
    }
    assert a.total == 15


# --- classify --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        ("api.openai.com", "/v1/chat/completions", ("openai", "openai.chat", "chat", "openai")),
        ("api.openai.com", "/v1/responses", ("openai", "openai.responses", "chat", "openai")),
        (
            "api.openai.com",
            "/v1/embeddings",
            ("openai", "openai.embeddings", "embeddings", "openai"),
        ),
        (
            "api.openai.com",
            "/v1/completions",
            ("openai", "openai.completions", "text_completion", "openai"),
        ),
        (
            "api.anthropic.com",
            "/v1/messages",
            ("anthropic", "anthropic.messages", "chat", "anthropic"),
        ),
        (
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.5-flash:generateContent",
            ("gemini", "gemini.generate", "generate_content", "gcp.gemini"),
        ),
        (
            "generativelanguage.googleapis.com",
            "/v1/models/gemini-2.5-flash:streamGenerateContent",
            ("gemini", "gemini.generate", "generate_content", "gcp.gemini"),
        ),
        # Gemini's OpenAI-compatible endpoint: Google's host, OpenAI's shape.
        (
            "generativelanguage.googleapis.com",
            "/v1beta/openai/chat/completions",
            ("gemini", "openai.chat", "chat", "gcp.gemini"),
        ),
        (
            "us-central1-aiplatform.googleapis.com",
            "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent",
            ("vertex", "gemini.generate", "generate_content", "gcp.vertex_ai"),
        ),
        (
            "myres.openai.azure.com",
            "/openai/deployments/gpt4o-prod/chat/completions",
            ("azure", "openai.chat", "chat", "azure.ai.openai"),
        ),
        (
            "myres.openai.azure.com",
            "/openai/v1/responses",
            ("azure", "openai.responses", "chat", "azure.ai.openai"),
        ),
        (
            "myres.cognitiveservices.azure.com",
            "/openai/deployments/emb/embeddings",
            ("azure", "openai.embeddings", "embeddings", "azure.ai.openai"),
        ),
        ("api.groq.com", "/openai/v1/chat/completions", ("groq", "openai.chat", "chat", "groq")),
        (
            "api.mistral.ai",
            "/v1/chat/completions",
            ("mistral", "openai.chat", "chat", "mistral_ai"),
        ),
        ("api.deepseek.com", "/chat/completions", ("deepseek", "openai.chat", "chat", "deepseek")),
        (
            "api.deepseek.com",
            "/anthropic/v1/messages",
            ("deepseek", "anthropic.messages", "chat", "deepseek"),
        ),
        (
            "openrouter.ai",
            "/api/v1/chat/completions",
            ("openrouter", "openai.chat", "chat", "openrouter"),
        ),
        ("api.x.ai", "/v1/chat/completions", ("xai", "openai.chat", "chat", "x_ai")),
        (
            "api.together.xyz",
            "/v1/chat/completions",
            ("together", "openai.chat", "chat", "together"),
        ),
        (
            "api.fireworks.ai",
            "/inference/v1/chat/completions",
            ("fireworks", "openai.chat", "chat", "fireworks"),
        ),
        ("localhost:11434", "/v1/chat/completions", ("ollama", "openai.chat", "chat", "ollama")),
        # Unknown hosts: the wire shape decides.
        (
            "llm.internal.example",
            "/v1/chat/completions",
            ("openai-compatible", "openai.chat", "chat", "openai-compatible"),
        ),
        (
            "localhost:8000",
            "/chat/completions",
            ("openai-compatible", "openai.chat", "chat", "openai-compatible"),
        ),
        (
            "gateway.example",
            "/api/v1/responses",
            ("openai-compatible", "openai.responses", "chat", "openai-compatible"),
        ),
        (
            "gateway.example",
            "/v1/embeddings",
            ("openai-compatible", "openai.embeddings", "embeddings", "openai-compatible"),
        ),
        (
            "gateway.example",
            "/v1/messages",
            ("anthropic-compatible", "anthropic.messages", "chat", "anthropic-compatible"),
        ),
        (
            "gateway.example",
            "/v1beta/models/gemini-2.5-flash:generateContent",
            ("gemini-compatible", "gemini.generate", "generate_content", "gemini-compatible"),
        ),
        (
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-embedding-001:batchEmbedContents",
            ("gemini", "gemini.embed", "embeddings", "gcp.gemini"),
        ),
        (
            "gateway.example",
            "/v1beta/models/text-embedding-004:embedContent",
            ("gemini-compatible", "gemini.embed", "embeddings", "gemini-compatible"),
        ),
        # Case, trailing dots and slashes, stray query strings.
        ("API.OpenAI.com.", "/v1/chat/completions/", ("openai", "openai.chat", "chat", "openai")),
        (
            "api.openai.com",
            "/v1/chat/completions?foo=1",
            ("openai", "openai.chat", "chat", "openai"),
        ),
    ],
)
def test_classify(host: str, path: str, expected: tuple[str, str, str, str]) -> None:
    assert classify("POST", host, path) == Endpoint(*expected)


@pytest.mark.parametrize(
    ("method", "host", "path"),
    [
        ("GET", "api.openai.com", "/v1/chat/completions"),
        ("GET", "api.openai.com", "/v1/models"),
        ("POST", "api.openai.com", "/v1/files"),
        ("POST", "api.openai.com", "/v1/responses/resp_123/cancel"),
        ("GET", "api.openai.com", "/v1/responses/resp_123"),
        ("POST", "api.openai.com", "/v1/responses/input_tokens"),
        ("POST", "api.openai.com", "/v1/chat/completions/chatcmpl-123"),
        ("POST", "api.anthropic.com", "/v1/messages/count_tokens"),
        ("POST", "api.anthropic.com", "/v1/messages/batches"),
        (
            "POST",
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.5-flash:countTokens",
        ),
        ("POST", "localhost:11434", "/api/chat"),  # Ollama's native API: not an OpenAI shape
        # Generic suffixes on unknown hosts need a version segment before them.
        ("POST", "chat.example", "/api/messages"),
        ("POST", "forms.example", "/survey/responses"),
        ("POST", "search.example", "/embeddings"),
        ("POST", "example.com", "/"),
        ("POST", "example.com", ""),
    ],
)
def test_not_llm_traffic(method: str, host: str, path: str) -> None:
    assert classify(method, host, path) is None


def test_hostmap_wildcards_ports_and_precedence() -> None:
    hosts = HostMap(
        {
            "*.example.com": "wild",
            "*.deep.example.com": "deeper",
            "exact.example.com": "exact",
            "localhost:9000": "nine",
        }
    )
    assert hosts.provider_for("a.example.com") == "wild"
    assert hosts.provider_for("x.deep.example.com") == "deeper"  # longest suffix wins
    assert hosts.provider_for("exact.example.com") == "exact"
    assert hosts.provider_for("example.com") is None  # a wildcard needs a longer host
    assert hosts.provider_for("A.Example.COM:443") == "wild"
    assert hosts.provider_for("localhost:9000") == "nine"
    assert hosts.provider_for("localhost:9001") is None
    assert hosts.provider_for("localhost") is None
    assert HostMap({"[::1]:9000": "v6"}).provider_for("[::1]:9000") == "v6"
    assert HostMap({"::1": "v6"}).provider_for("::1") == "v6"


def test_hostmap_is_a_mapping_and_merges() -> None:
    assert DEFAULT_HOSTS["api.openai.com"] == "openai"
    assert "*.openai.azure.com" in DEFAULT_HOSTS
    merged = DEFAULT_HOSTS.merged({"gw.corp.example": "openai", "api.openai.com": "custom"})
    assert classify("POST", "gw.corp.example", "/v1/messages", merged) == Endpoint(
        "openai", "anthropic.messages", "chat", "openai"
    )
    assert merged.provider_for("api.openai.com") == "custom"
    assert DEFAULT_HOSTS.provider_for("api.openai.com") == "openai"  # the default is untouched
    # A plain mapping works too (converted per call).
    assert classify("POST", "x.test", "/anything/messages", {"x.test": "anthropic"}) == ANTHROPIC


@pytest.mark.parametrize("bad", ["", "*", " "])
def test_hostmap_rejects_bad_keys(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid host mapping"):
        HostMap({bad: "openai"})


def test_parse_host_mappings() -> None:
    items = [" llm.internal = openai ", "*.example.com=anthropic", "llm.internal=gemini"]
    assert parse_host_mappings(items) == {"llm.internal": "gemini", "*.example.com": "anthropic"}
    assert parse_host_mappings([]) == {}


@pytest.mark.parametrize("bad", ["nonsense", "=openai", "host=", " = "])
def test_parse_host_mappings_names_the_bad_item(bad: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_host_mappings(["ok.test=openai", bad])
    assert str(caught.value) == f"{bad!r} is not HOST=PROVIDER, e.g. llm.internal=openai"


def test_every_classified_api_has_a_wire_module() -> None:
    apis = {ep.api for ep in ALL_ENDPOINTS}
    assert apis == set(WIRE_APIS)
    assert wire_api("some.future.api") is wire_api("openai.chat")


def test_classify_is_memoised_and_bounded() -> None:
    hosts = HostMap({"a.test": "openai"})
    first = classify("POST", "a.test", "/v1/chat/completions", hosts)
    assert classify("POST", "a.test", "/v1/chat/completions", hosts) is first
    for i in range(5000):
        classify("POST", f"h{i}.test", "/v1/chat/completions", hosts)
    assert len(hosts._cache) <= 4096


# --- request_model / wants_stream ----------------------------------------------------------------


def test_request_model() -> None:
    assert request_model(OPENAI_CHAT, "/v1/chat/completions", {"model": "gpt-4o-mini"}) == (
        "gpt-4o-mini"
    )
    assert (
        request_model(
            GEMINI, "/v1beta/models/gemini-2.5-flash:streamGenerateContent", {"contents": []}
        )
        == "gemini-2.5-flash"
    )
    assert (
        request_model(
            GEMINI,
            "/v1/projects/p/locations/l/publishers/google/models/gemini-2.5-pro:generateContent",
            None,
        )
        == "gemini-2.5-pro"
    )
    azure = Endpoint("azure", "openai.chat", "chat", "azure.ai.openai")
    path = "/openai/deployments/gpt4o-prod/chat/completions"
    assert request_model(azure, path, {"messages": []}) == "gpt4o-prod"
    assert request_model(azure, path, {"model": "gpt-4o"}) == "gpt-4o"  # the body wins
    assert request_model(azure, "/openai/v1/chat/completions", {"model": "gpt-4o"}) == "gpt-4o"
    assert request_model(OPENAI_CHAT, "/v1/chat/completions", {"model": ""}) is None
    assert request_model(OPENAI_CHAT, "/v1/chat/completions", {"model": 4}) is None
    assert request_model(OPENAI_CHAT, "/v1/chat/completions", ["model"]) is None
    assert request_model(OPENAI_CHAT, "/v1/chat/completions", None) is None


def test_wants_stream() -> None:
    assert wants_stream(OPENAI_CHAT, "/v1/chat/completions", "", {"stream": True})
    assert not wants_stream(OPENAI_CHAT, "/v1/chat/completions", "", {"stream": False})
    assert not wants_stream(OPENAI_CHAT, "/v1/chat/completions", "", {"stream": "true"})
    assert not wants_stream(OPENAI_CHAT, "/v1/chat/completions", "", None)
    assert wants_stream(ANTHROPIC, "/v1/messages", "", {"stream": True})
    assert wants_stream(GEMINI, "/v1beta/models/g:streamGenerateContent", "alt=sse", {})
    assert wants_stream(GEMINI, "/v1beta/models/g:streamGenerateContent", "", {})
    assert not wants_stream(GEMINI, "/v1beta/models/g:generateContent", "", {"stream": True})


# --- summarize: the fixtures, exact numbers ------------------------------------------------------


def test_openai_chat_cached_tokens_are_part_of_input() -> None:
    s = summary_of(OPENAI_CHAT, "openai-chat.json")
    assert s.usage == Usage(input=1149, output=353, cache_read=1024)
    assert s.model == "gpt-4o-mini-2024-07-18"
    assert s.text.startswith("1. **Open-Source Library OpenLLMetry")
    assert (s.finish_reason, s.complete, s.error, s.tool_calls) == ("stop", True, None, ())


def test_openai_chat_reasoning_tokens_are_part_of_output() -> None:
    s = summary_of(OPENAI_CHAT, "openai-chat-reasoning.json")
    assert s.usage == Usage(input=8, output=82, reasoning=64)
    assert s.usage.total == 90
    assert s.text == "Hello! How can I help you today?"
    assert s.model == "gpt-5-2025-08-07"


def test_openai_chat_stream() -> None:
    s = summary_of(OPENAI_CHAT, "openai-chat-stream.sse")
    assert s == ResponseSummary(
        model="gpt-4o-mini-2024-07-18",
        usage=Usage(input=78, output=9),
        text="The capital of the UK is London.",
        tool_calls=(),
        finish_reason="stop",
        complete=True,
        error=None,
    )


def test_openai_chat_tools_stream() -> None:
    s = summary_of(OPENAI_CHAT, "openai-chat-tools-stream.sse")
    assert s.tool_calls == (
        ToolCall("call_ZR5UUuTt3pf61kjwAJIYdVMj", "get_capital", '{"country":"UK"}'),
    )
    assert (s.text, s.finish_reason, s.complete) == ("", "tool_calls", True)
    assert s.usage == Usage(input=53, output=15)


def test_openai_chat_stream_without_usage_or_done() -> None:
    body = fixture("openai-chat-stream.sse")
    no_usage = body.replace(body[body.rindex(b'data: {"id"') : body.rindex(b"data: [DONE]")], b"")
    s = summarize(OPENAI_CHAT, no_usage, SSE)
    assert (s.usage, s.complete, s.text) == (None, True, "The capital of the UK is London.")
    cut = summarize(OPENAI_CHAT, body[: body.index(b'"content":" UK"')], SSE)
    assert (cut.usage, cut.complete, cut.text) == (None, False, "The capital of the")


def test_openai_responses() -> None:
    s = summary_of(OPENAI_RESPONSES, "openai-responses.json")
    assert s == ResponseSummary(
        "gpt-4.1-nano-2025-04-14",
        Usage(input=14, output=8),
        "The capital of France is Paris.",
        (),
        "completed",
        True,
        None,
    )


def test_openai_responses_reasoning() -> None:
    s = summary_of(OPENAI_RESPONSES, "openai-responses-reasoning.json")
    assert s.usage == Usage(input=11, output=131, reasoning=64)
    assert s.text == "3"


@pytest.mark.parametrize(
    "name", ["openai-responses-stream.sse", "openai-responses-stream-alt-keyorder.sse"]
)
def test_openai_responses_stream(name: str) -> None:
    s = summary_of(OPENAI_RESPONSES, name)
    assert s == ResponseSummary(
        "gpt-4.1-nano-2025-04-14",
        Usage(input=14, output=9),
        "2 + 2 equals 4.",
        (),
        "completed",
        True,
        None,
    )


def test_openai_responses_tools_stream() -> None:
    s = summary_of(OPENAI_RESPONSES, "openai-responses-tools-stream.sse")
    assert s.tool_calls == (
        ToolCall("call_kL0PCQV7M2WMoVX8V8OtYSAL", "get_capital", '{"country":"France"}'),
    )
    assert (s.model, s.usage, s.complete) == (
        "gpt-4o-2024-08-06",
        Usage(input=255, output=16),
        True,
    )


def test_openai_responses_stream_cut_before_completed() -> None:
    body = fixture("openai-responses-tools-stream.sse")
    s = summarize(
        OPENAI_RESPONSES, body[: body.index(b"event: response.function_call_arguments.done")], SSE
    )
    assert (s.complete, s.usage, s.model) == (False, None, "gpt-4o-2024-08-06")
    # The fragments received so far are what the client saw.
    assert s.tool_calls == (
        ToolCall("call_kL0PCQV7M2WMoVX8V8OtYSAL", "get_capital", '{"country":"France"}'),
    )


def test_openai_embeddings() -> None:
    s = summary_of(OPENAI_EMBEDDINGS, "openai-embeddings.json")
    assert s == ResponseSummary(
        "text-embedding-ada-002-v2", Usage(input=8), "", (), None, True, None
    )


def test_anthropic_message_cache_write_and_read() -> None:
    write = summary_of(ANTHROPIC, "anthropic-messages-cache-write.json")
    assert write.usage == Usage(input=4 + 1163, output=187, cache_write=1163)
    read = summary_of(ANTHROPIC, "anthropic-messages-cache-read.json")
    assert read.usage == Usage(input=4 + 1163, output=202, cache_read=1163)
    assert read.model == "claude-3-5-sonnet-20240620"
    assert (read.finish_reason, read.complete) == ("end_turn", True)


def test_anthropic_message_modern_usage_block() -> None:
    s = summary_of(ANTHROPIC, "anthropic-messages.json")
    assert s.usage == Usage(input=222, output=39)
    assert s.text.startswith('{"joke": "Why did the developer')


def test_anthropic_message_tool_use() -> None:
    s = summary_of(ANTHROPIC, "anthropic-messages-tool-use.json")
    assert s.tool_calls == (
        ToolCall(
            "toolu_01K5KhMEdg2McN7dAkB4Y4hi", "get_time", '{"timezone":"America/Los_Angeles"}'
        ),
    )
    assert (s.text, s.finish_reason, s.usage) == ("", "tool_use", Usage(input=568, output=58))


def test_anthropic_stream() -> None:
    s = summary_of(ANTHROPIC, "anthropic-messages-stream.sse")
    assert s == ResponseSummary(
        "claude-sonnet-4-5-20250929",
        Usage(input=17, output=10),
        "- Captain\n- Scoop",
        (),
        "end_turn",
        True,
        None,
    )


def test_anthropic_stream_old_delta_keeps_message_start_input() -> None:
    # message_delta carries only output_tokens here: overwrite that, keep the rest.
    s = summary_of(ANTHROPIC, "anthropic-cache-stream.sse")
    assert s.usage == Usage(input=4 + 1165, output=221, cache_read=1165)
    assert s.text.endswith("pays off in the long run.")


def test_anthropic_tools_stream() -> None:
    s = summary_of(ANTHROPIC, "anthropic-tools-stream.sse")
    assert s.text == (
        "Certainly! I can help you with that information. To get the weather and current time "
        "in San Francisco, I'll need to use two separate functions. Let me fetch that data for "
        "you."
    )
    assert s.tool_calls == (
        ToolCall(
            "toolu_014x5X91kx3fvdhpLvwXZWE2",
            "get_weather",
            '{"location": "San Francisco, CA", "unit": "celsius"}',
        ),
        ToolCall(
            "toolu_0121kXsENLvoDZ72LCuAnCCz", "get_time", '{"timezone": "America/Los_Angeles"}'
        ),
    )
    assert (s.finish_reason, s.usage) == ("tool_use", Usage(input=506, output=153))


def test_anthropic_compaction_sums_iterations() -> None:
    # Top level: 181 in, 0 cache read, 8 out (the final step only). The iterations are the
    # compaction step (100 in, 55,096 cache read, 83 out) and the message step (181 in, 8 out).
    s = summary_of(ANTHROPIC, "anthropic-compaction-cache-stream.sse")
    assert s.usage == Usage(input=100 + 55096 + 181, output=83 + 8, cache_read=55096)
    assert s.text == "Hello! 👋"  # the compaction summary is not answer text
    assert (s.model, s.finish_reason, s.complete) == ("claude-sonnet-4-6", "end_turn", True)


def test_anthropic_compaction_non_stream_sums_iterations_too() -> None:
    usage = {
        "input_tokens": 181,
        "cache_read_input_tokens": 0,
        "output_tokens": 8,
        "iterations": [
            {
                "type": "compaction",
                "input_tokens": 100,
                "cache_read_input_tokens": 55096,
                "cache_creation_input_tokens": 10,
                "output_tokens": 83,
            },
            {"type": "message", "input_tokens": 181, "output_tokens": 8},
        ],
    }
    body = orjson.dumps({"type": "message", "content": [], "usage": usage})
    assert summarize(ANTHROPIC, body, JSON).usage == Usage(
        input=100 + 55096 + 10 + 181, output=91, cache_read=55096, cache_write=10
    )


def test_anthropic_stream_cut_after_message_start() -> None:
    body = fixture("anthropic-compaction-cache-stream.sse")
    s = summarize(ANTHROPIC, body[: body.index(b"event: content_block_start")], SSE)
    assert s.usage == Usage(input=100 + 55096, output=7, cache_read=55096)
    assert (s.complete, s.finish_reason) == (False, None)


def test_anthropic_stream_error_event() -> None:
    s = summary_of(ANTHROPIC, "anthropic-stream-error-event.sse")
    assert (s.error, s.complete, s.usage) == ("overloaded_error: Overloaded", False, None)


def test_anthropic_tool_without_argument_fragments() -> None:
    body = (
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"tool_use","id":"t1","name":"now","input":{}}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"input_json_delta","partial_json":""}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    assert summarize(ANTHROPIC, body, SSE).tool_calls == (ToolCall("t1", "now", "{}"),)


def test_gemini_generate() -> None:
    s = summary_of(GEMINI, "gemini-generate.json")
    # output = candidates 711 + thoughts 1096; 5 + 1807 = 1812 = totalTokenCount
    assert s.usage == Usage(input=5, output=711 + 1096, reasoning=1096)
    assert (s.model, s.finish_reason, s.complete) == ("gemini-2.5-flash", "STOP", True)
    assert s.text.startswith("AI stands for **Artificial Intelligence**.")


def test_gemini_sse_stream_takes_last_usage() -> None:
    s = summary_of(GEMINI, "gemini-stream.sse")
    assert s.usage == Usage(input=18, output=80 + 35, reasoning=35)
    assert s.text == "\n".join(str(i) for i in range(1, 31))
    assert (s.model, s.finish_reason, s.complete) == ("gemini-2.5-flash", "STOP", True)


def test_gemini_sse_stream_cut_has_no_finish() -> None:
    body = fixture("gemini-stream.sse")
    s = summarize(GEMINI, body[: body.rindex(b"data: ")], "text/event-stream")
    assert (s.complete, s.finish_reason) == (False, None)
    assert s.usage == Usage(input=18, output=79 + 35, reasoning=35)


def test_gemini_json_array_stream() -> None:
    s = summary_of(GEMINI, "gemini-stream-jsonarray.json")
    assert s.usage == Usage(input=2, output=9 + 179, reasoning=179)
    assert (s.text, s.model, s.finish_reason, s.complete) == (
        "Hello! How can I help you today?",
        "gemini-3.6-flash",
        "STOP",
        True,
    )


def test_gemini_json_array_stream_truncated() -> None:
    body = fixture("gemini-stream-jsonarray.json")
    s = summarize(GEMINI, body[: body.index(b'"finishReason"')], JSON)
    assert (s.text, s.complete, s.error) == ("Hello! How can I help you today?", False, None)
    assert s.usage == Usage(input=2, output=188, reasoning=179)


def test_gemini_function_calls_and_thoughts() -> None:
    chunk = {
        "candidates": [
            {
                "content": {
                    "parts": [
                        {"text": "thinking...", "thought": True},
                        {"text": "Calling."},
                        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                        {"functionCall": {"id": "fc1", "name": "noop"}},
                    ]
                },
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 100,
            "cachedContentTokenCount": 60,
            "candidatesTokenCount": 20,
            "thoughtsTokenCount": 7,
            "toolUsePromptTokenCount": 3,
        },
    }
    s = summarize(GEMINI, orjson.dumps(chunk), JSON)
    assert s.text == "Calling."
    assert s.tool_calls == (
        ToolCall(None, "get_weather", '{"city":"Paris"}'),
        ToolCall("fc1", "noop", "{}"),
    )
    assert s.usage == Usage(input=103, output=27, cache_read=60, reasoning=7)


def test_gemini_blocked_prompt() -> None:
    body = orjson.dumps(
        {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 9}}
    )
    s = summarize(GEMINI, body, JSON)
    assert (s.finish_reason, s.complete, s.usage) == ("SAFETY", True, Usage(input=9))


# --- summarize: errors and odd bodies ------------------------------------------------------------


@pytest.mark.parametrize(
    ("ep", "name", "error"),
    [
        (
            OPENAI_CHAT,
            "errors-openai.json",
            "invalid_image_url: Error while downloading https://source.unsplash.com/8xznAGy4HcY/800x400.",
        ),
        (
            OPENAI_CHAT,
            "errors-openai-401.json",
            (
                "invalid_api_key: Incorrect API key provided: "
                "sk-abcde****************************************************wxyz. You can find "
                "your API key at https://platform.openai.com/account/api-keys."
            ),
        ),
        (
            ANTHROPIC,
            "errors-anthropic.json",
            "invalid_request_error: prompt is too long: 205351 tokens > 200000 maximum",
        ),
        (ANTHROPIC, "errors-anthropic-529.json", "overloaded_error: Overloaded"),
        (
            GEMINI,
            "errors-gemini.json",
            "INVALID_ARGUMENT: API key not valid. Please pass a valid API key.",
        ),
    ],
)
def test_error_bodies(ep: Endpoint, name: str, error: str) -> None:
    s = summary_of(ep, name)
    assert (s.error, s.usage, s.text, s.complete) == (error, None, "", True)


def test_error_body_on_a_streamed_request_reads_as_json() -> None:
    # The content type says SSE (a misconfigured server), but the body is a JSON error.
    s = summarize(ANTHROPIC, fixture("errors-anthropic-529.json"), SSE)
    assert s.error == "overloaded_error: Overloaded"


def test_string_error_body() -> None:
    s = summarize(OPENAI_CHAT, b'{"error":"model \\"llama9\\" not found"}', JSON)
    assert s.error == 'model "llama9" not found'


def test_openai_mid_stream_error_chunk() -> None:
    body = (
        b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
        b'data: {"error":{"message":"The server had an error","type":"server_error"}}\n\n'
    )
    s = summarize(OPENAI_CHAT, body, SSE)
    assert (s.text, s.error, s.complete) == ("Hi", "server_error: The server had an error", False)


def test_responses_failed_incomplete_and_error_events() -> None:
    def stream(*events: dict[str, object]) -> bytes:
        return b"".join(
            b"event: %s\ndata: %s\n\n" % (str(e["type"]).encode(), orjson.dumps(e)) for e in events
        )

    usage = {
        "input_tokens": 20,
        "output_tokens": 5,
        "input_tokens_details": {"cached_tokens": 10},
        "output_tokens_details": {"reasoning_tokens": 2},
    }
    failed = stream(
        {
            "type": "response.failed",
            "response": {
                "model": "gpt-5",
                "status": "failed",
                "usage": usage,
                "error": {"code": "server_error", "message": "boom"},
            },
        }
    )
    s = summarize(OPENAI_RESPONSES, failed, SSE)
    assert (s.complete, s.error, s.finish_reason) == (True, "server_error: boom", "failed")
    assert s.usage == Usage(input=20, output=5, cache_read=10, reasoning=2)

    incomplete = stream(
        {"type": "response.output_text.delta", "delta": "Par"},
        {
            "type": "response.incomplete",
            "response": {
                "model": "gpt-5",
                "status": "incomplete",
                "usage": usage,
                "incomplete_details": {"reason": "max_output_tokens"},
            },
        },
    )
    s = summarize(OPENAI_RESPONSES, incomplete, SSE)
    assert (s.complete, s.error, s.finish_reason, s.text) == (
        True,
        None,
        "max_output_tokens",
        "Par",
    )

    error = stream(
        {"type": "response.output_text.delta", "delta": "Pa"},
        {"type": "error", "code": "rate_limit_exceeded", "message": "slow down"},
    )
    s = summarize(OPENAI_RESPONSES, error, SSE)
    assert (s.complete, s.error, s.text) == (False, "rate_limit_exceeded: slow down", "Pa")


def test_legacy_completions() -> None:
    body = orjson.dumps(
        {
            "model": "gpt-3.5-turbo-instruct",
            "choices": [{"index": 0, "text": "Hello", "finish_reason": "length"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
        }
    )
    assert summarize(OPENAI_COMPLETIONS, body, JSON) == ResponseSummary(
        "gpt-3.5-turbo-instruct", Usage(input=5, output=7), "Hello", (), "length", True, None
    )
    stream = (
        b'data: {"model":"m","choices":[{"index":0,"text":"Hel"}]}\n\n'
        b'data: {"model":"m","choices":[{"index":0,"text":"lo","finish_reason":"stop"}]}\n\n'
        b'data: {"model":"m","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}'
        b"\n\ndata: [DONE]\n\n"
    )
    assert summarize(OPENAI_COMPLETIONS, stream, SSE) == ResponseSummary(
        "m", Usage(input=5, output=2), "Hello", (), "stop", True, None
    )


def test_openai_compatible_usage_spellings() -> None:
    deepseek = orjson.dumps(
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 100,
                "completion_tokens": 3,
                "prompt_cache_hit_tokens": 64,
                "prompt_cache_miss_tokens": 36,
            },
        }
    )
    assert summarize(OPENAI_CHAT, deepseek, JSON).usage == Usage(input=100, output=3, cache_read=64)
    openrouter = orjson.dumps(
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 100,
                "completion_tokens": 3,
                "prompt_tokens_details": {"cached_tokens": 50, "cache_write_tokens": 20},
            },
        }
    )
    assert summarize(OPENAI_CHAT, openrouter, JSON).usage == Usage(
        input=100, output=3, cache_read=50, cache_write=20
    )


def test_chat_tool_calls_non_stream_and_parallel_stream() -> None:
    body = orjson.dumps(
        {
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "tool_calls",
                    "message": {
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "c1",
                                "type": "function",
                                "function": {"name": "a", "arguments": "{}"},
                            },
                            {
                                "id": "c2",
                                "type": "function",
                                "function": {"name": "b", "arguments": {"x": 1}},
                            },
                        ],
                    },
                }
            ]
        }
    )
    assert summarize(OPENAI_CHAT, body, JSON).tool_calls == (
        ToolCall("c1", "a", "{}"),
        ToolCall("c2", "b", '{"x":1}'),
    )

    def chunk(*calls: dict[str, object]) -> bytes:
        return (
            b"data: "
            + orjson.dumps({"choices": [{"index": 0, "delta": {"tool_calls": list(calls)}}]})
            + b"\n\n"
        )

    stream = (
        chunk({"index": 0, "id": "c1", "function": {"name": "a", "arguments": ""}})
        + chunk({"index": 1, "id": "c2", "function": {"name": "b", "arguments": '{"y"'}})
        + chunk({"index": 0, "function": {"arguments": '{"x":1}'}})
        + chunk({"index": 1, "function": {"arguments": ":2}"}})
        + b"data: [DONE]\n\n"
    )
    assert summarize(OPENAI_CHAT, stream, SSE).tool_calls == (
        ToolCall("c1", "a", '{"x":1}'),
        ToolCall("c2", "b", '{"y":2}'),
    )
    # Servers that omit "index" but send a fresh id per call.
    no_index = (
        chunk({"id": "c1", "function": {"name": "a", "arguments": '{"x":'}})
        + chunk({"function": {"arguments": "1}"}})
        + chunk({"id": "c2", "function": {"name": "b", "arguments": "{}"}})
    )
    assert summarize(OPENAI_CHAT, no_index, SSE).tool_calls == (
        ToolCall("c1", "a", '{"x":1}'),
        ToolCall("c2", "b", "{}"),
    )


def test_only_choice_zero_is_summarised() -> None:
    body = orjson.dumps(
        {
            "choices": [
                {"index": 1, "message": {"content": "second"}, "finish_reason": "length"},
                {"index": 0, "message": {"content": "first"}, "finish_reason": "stop"},
            ]
        }
    )
    s = summarize(OPENAI_CHAT, body, JSON)
    assert (s.text, s.finish_reason) == ("first", "stop")


@pytest.mark.parametrize(
    ("body", "content_type", "error"),
    [
        (b"", JSON, "empty body"),
        (b"  \r\n", SSE, "empty body"),
        (b"{not json", JSON, "unparseable body"),
        (b"<html><body>502 Bad Gateway</body></html>", "text/html", "unparseable body"),
        (b"[1, 2]", JSON, "unparseable body"),
        (b"null", JSON, "unparseable body"),
    ],
)
def test_unusable_bodies(body: bytes, content_type: str, error: str) -> None:
    s = summarize(OPENAI_CHAT, body, content_type)
    assert (s.error, s.complete, s.usage) == (error, False, None)


def test_sse_without_content_type_is_sniffed() -> None:
    s = summarize(OPENAI_CHAT, fixture("openai-chat-stream.sse"), "")
    assert s.text == "The capital of the UK is London."


def test_sse_with_only_comments_is_incomplete_not_an_error() -> None:
    s = summarize(OPENAI_CHAT, b": ping\n\n: ping\n\n", SSE)
    assert (s.complete, s.error, s.usage) == (False, None, None)


def test_odd_token_counts_become_zero() -> None:
    body = orjson.dumps(
        {
            "choices": [],
            "usage": {
                "prompt_tokens": -5,
                "completion_tokens": "7",
                "prompt_tokens_details": {"cached_tokens": True},
                "completion_tokens_details": {"reasoning_tokens": 2.0},
            },
        }
    )
    assert summarize(OPENAI_CHAT, body, JSON).usage == Usage(reasoning=2)


# --- never raises ----------------------------------------------------------------------------------

_KEYS = st.sampled_from(
    [
        "type",
        "usage",
        "choices",
        "delta",
        "content",
        "text",
        "index",
        "tool_calls",
        "function",
        "arguments",
        "name",
        "id",
        "call_id",
        "message",
        "model",
        "candidates",
        "parts",
        "functionCall",
        "args",
        "usageMetadata",
        "error",
        "response",
        "output",
        "item",
        "output_index",
        "partial_json",
        "content_block",
        "finishReason",
        "finish_reason",
        "iterations",
        "input_tokens",
        "output_tokens",
        "prompt_tokens",
        "completion_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "cache_creation",
        "prompt_tokens_details",
        "cached_tokens",
        "promptTokenCount",
        "thoughtsTokenCount",
        "stop_reason",
        "status",
        "incomplete_details",
        "reason",
        "promptFeedback",
        "blockReason",
        "modelVersion",
        "input",
        "code",
        "thought",
    ]
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.sampled_from(
        [
            "message_start",
            "message_delta",
            "content_block_start",
            "content_block_delta",
            "text_delta",
            "input_json_delta",
            "tool_use",
            "text",
            "error",
            "message_stop",
            "response.completed",
            "response.failed",
            "response.output_text.delta",
            "response.output_item.added",
            "response.output_item.done",
            "response.function_call_arguments.delta",
            "function_call",
            "output_text",
            "[DONE]",
        ]
    ),
)
_JSON = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(_KEYS, children, max_size=6)
    ),
    max_leaves=30,
)


def _sse_body(values: list[object], names: list[str]) -> bytes:
    out = []
    for i, value in enumerate(values):
        name = names[i % len(names)] if names else "message"
        out.append(b"event: " + name.encode() + b"\ndata: " + orjson.dumps(value) + b"\n\n")
    return b"".join(out)


@settings(max_examples=300, deadline=None)
@given(ep=st.sampled_from(ALL_ENDPOINTS), value=_JSON)
def test_any_json_value_never_raises(ep: Endpoint, value: object) -> None:
    s = _summarize(ep, orjson.dumps(value), JSON)
    assert isinstance(s, ResponseSummary)


@settings(max_examples=300, deadline=None)
@given(
    ep=st.sampled_from(ALL_ENDPOINTS),
    values=st.lists(_JSON, max_size=6),
    names=st.lists(st.sampled_from(["message", "error", "message_start", "ping"]), max_size=3),
)
def test_any_event_stream_never_raises(
    ep: Endpoint, values: list[object], names: list[str]
) -> None:
    body = _sse_body(values, names)
    s = _summarize(ep, body, SSE)
    assert isinstance(s, ResponseSummary)
    assert isinstance(_summarize(ep, body[: len(body) // 2], SSE), ResponseSummary)


@settings(max_examples=300, deadline=None)
@given(
    ep=st.sampled_from(ALL_ENDPOINTS),
    body=st.binary(max_size=200),
    content_type=st.sampled_from([JSON, SSE, "", "text/html"]),
)
def test_any_bytes_never_raise(ep: Endpoint, body: bytes, content_type: str) -> None:
    assert isinstance(_summarize(ep, body, content_type), ResponseSummary)


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.*")), ids=lambda p: p.name)
@pytest.mark.parametrize("ep", ALL_ENDPOINTS, ids=lambda e: e.api)
def test_every_fixture_prefix_never_raises(ep: Endpoint, path: Path) -> None:
    body = path.read_bytes()
    for end in range(0, len(body), max(1, len(body) // 40)):
        _summarize(ep, body[:end], SSE if path.suffix == ".sse" else JSON)
