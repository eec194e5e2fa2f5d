"""OpenTelemetry export: the span of an exchange, trace grouping, content, and a receiver that is
down or slow (docs/otel.md). Spans are caught with the SDK's in-memory exporter; the receiver
that users run (Arize Phoenix) is in tests/test_otel_phoenix.py.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from llmreel.core.exchange import Exchange
from llmreel.metering import spans
from llmreel.metering.metrics import Metrics
from llmreel.metering.otel import OtlpSink
from llmreel.metering.otlpconfig import traces_endpoint
from llmreel.providers import Endpoint, ResponseSummary, Usage
from tests.conftest import ProxyThread, http_client, wait_until
from tests.fakeupstream import FakeUpstream

CHAT = Endpoint("openai", "openai.chat", "chat", "openai")
KEY = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0" * 2


def exchange(**kw: Any) -> Exchange:
    request = {"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": f"my key is {KEY}, weather?"}]}  # fmt: skip
    response = {"id": "c1", "model": "gpt-4o-mini-2024-07-18", "choices": [{"index": 0,
                "message": {"role": "assistant", "content": "Sunny."}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 3}}  # fmt: skip
    fields: dict[str, Any] = {
        "id": "01J0000000000000000000000", "started": 1_700_000_000.25, "method": "POST",
        "url": "https://api.openai.com/v1/chat/completions", "endpoint": CHAT, "cache": "miss",
        "namespace": "default", "key": "k", "model": "gpt-4o-mini",
        "response_model": "gpt-4o-mini-2024-07-18", "status": 200, "duration_s": 0.5,
        "usage": Usage(input=12, output=3, cache_read=2), "cost_usd": 0.00042,
        "request_headers": [("content-type", "application/json")],
        "response_headers": [("content-type", "application/json")],
        "request_body": orjson.dumps(request), "response_body": orjson.dumps(response),
    }  # fmt: skip
    fields.update(kw)
    return Exchange(**fields)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def caught(registry: CollectorRegistry) -> Iterator[tuple[OtlpSink, InMemorySpanExporter]]:
    memory = InMemorySpanExporter()
    sink = OtlpSink("http://127.0.0.1:9/v1/traces", Metrics(registry), exporter=memory)
    yield sink, memory
    sink.close()


def counted(registry: CollectorRegistry, what: str) -> float:
    return registry.get_sample_value(f"llmreel_otlp_spans_{what}_total") or 0.0


# --- the span of one exchange -----------------------------------------------------------------


def test_an_exchange_becomes_one_client_span_with_the_genai_attributes(
    caught: tuple[OtlpSink, InMemorySpanExporter], registry: CollectorRegistry
) -> None:
    sink, memory = caught
    sink.append(exchange())
    assert sink.flush()
    (span,) = memory.get_finished_spans()
    assert span.name == "chat gpt-4o-mini"
    assert span.kind is SpanKind.CLIENT
    assert span.start_time == 1_700_000_000_250_000_000
    assert span.end_time == 1_700_000_000_750_000_000
    assert span.parent is None  # neither session nor run: a trace of its own
    assert span.status.status_code is StatusCode.UNSET
    attrs = dict(span.attributes or {})
    assert attrs == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 3,
        "gen_ai.usage.cache_read.input_tokens": 2,
        "gen_ai.response.finish_reasons": ("stop",),
        "server.address": "api.openai.com",
        "server.port": 443,
        "http.request.method": "POST",
        "http.response.status_code": 200,
        "llmreel.cache": "miss",
        "llmreel.namespace": "default",
        "llmreel.cost_usd": 0.00042,
        "llmreel.provider": "openai",
        "llmreel.api": "openai.chat",
        "llmreel.exchange_id": "01J0000000000000000000000",
        "llmreel.recorded": False,
        "openinference.span.kind": "LLM",
    }
    assert span.resource.attributes["service.name"] == "llmreel"
    assert counted(registry, "exported") == 1


def test_without_content_no_prompt_or_answer_leaves(
    caught: tuple[OtlpSink, InMemorySpanExporter],
) -> None:
    sink, memory = caught
    sink.append(exchange())
    assert sink.flush()
    text = repr(memory.get_finished_spans()[0].to_json())
    assert "weather" not in text and "Sunny" not in text and "be brief" not in text


def test_failures_are_error_spans_with_their_type(
    caught: tuple[OtlpSink, InMemorySpanExporter],
) -> None:
    sink, memory = caught
    sink.append(exchange(status=429, error_type="429", error=f"rate limited for {KEY}"))
    sink.append(exchange(status=None, error_type="stream_cut", error="the stream was cut"))
    assert sink.flush()
    limited, cut = memory.get_finished_spans()
    assert limited.status.status_code is StatusCode.ERROR
    assert KEY not in (limited.status.description or "") and "[redacted" in (
        limited.status.description or ""
    )
    assert limited.attributes is not None and limited.attributes["error.type"] == "429"
    assert cut.status.status_code is StatusCode.ERROR
    assert cut.attributes is not None and cut.attributes["error.type"] == "stream_cut"
    assert "http.response.status_code" not in cut.attributes


def test_a_replay_without_a_summary_still_reports_its_finish_reason(
    caught: tuple[OtlpSink, InMemorySpanExporter],
) -> None:
    sink, memory = caught
    sink.append(exchange(cache="hit", summary=None))
    assert sink.flush()
    attrs = memory.get_finished_spans()[0].attributes or {}
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert attrs["llmreel.cache"] == "hit"


# --- grouping ---------------------------------------------------------------------------------


def test_a_run_is_one_trace_under_one_root_span_sent_at_close(registry: CollectorRegistry) -> None:
    memory = InMemorySpanExporter()
    sink = OtlpSink("http://127.0.0.1:9/v1/traces", Metrics(registry), exporter=memory)
    sink.append(exchange(run="run-1", started=100.0, duration_s=1.0))
    sink.append(exchange(run="run-1", started=102.0, duration_s=2.0))
    sink.append(exchange(run="run-2", started=103.0))
    sink.append(exchange(run="run-1", session="thread-a", started=104.0))
    assert sink.flush()
    assert len(memory.get_finished_spans()) == 4  # roots come at close
    sink.close()
    by_name: dict[str, list[Any]] = {}
    for span in memory.get_finished_spans():
        by_name.setdefault(span.name, []).append(span)
    run1, run2 = spans.group_of(exchange(run="run-1")), spans.group_of(exchange(run="run-2"))
    thread = spans.group_of(exchange(session="thread-a", run="run-1"))
    assert run1 is not None and run2 is not None and thread is not None
    assert thread.kind == "session"  # the client's own thread is the finer grouping
    assert len({run1.trace_id, run2.trace_id, thread.trace_id}) == 3
    calls = by_name["chat gpt-4o-mini"]
    assert [(s.context.trace_id, s.parent.span_id) for s in calls] == [
        (run1.trace_id, run1.span_id), (run1.trace_id, run1.span_id),
        (run2.trace_id, run2.span_id), (thread.trace_id, thread.span_id)]  # fmt: skip
    roots = {s.context.trace_id: s for s in by_name["llmreel run"] + by_name["llmreel session"]}
    root = roots[run1.trace_id]
    assert root.parent is None and root.context.span_id == run1.span_id
    assert root.kind is SpanKind.INTERNAL
    assert (root.start_time, root.end_time) == (100_000_000_000, 104_000_000_000)
    assert root.attributes == {"llmreel.run": "run-1", "llmreel.exchanges": 2,
                               "openinference.span.kind": "CHAIN"}  # fmt: skip
    assert roots[thread.trace_id].attributes == {
        "llmreel.session": "thread-a", "llmreel.exchanges": 1, "openinference.span.kind": "CHAIN",
        "gen_ai.conversation.id": "thread-a", "session.id": "thread-a"}  # fmt: skip
    assert len(roots) == 3


def test_group_ids_are_the_same_in_every_process() -> None:
    group = spans.group_of(exchange(run="01JABC"))
    assert group is not None
    # sha256("run:01JABC"): another proxy (or a later one) puts its spans in the same trace.
    digest = hashlib.sha256(b"run:01JABC").digest()
    assert group.trace_id == int.from_bytes(digest[:16], "big")
    assert group.span_id == int.from_bytes(digest[16:24], "big")


# --- content ----------------------------------------------------------------------------------


def test_content_goes_out_masked_as_the_conventions_messages(registry: CollectorRegistry) -> None:
    memory = InMemorySpanExporter()
    sink = OtlpSink(
        "http://127.0.0.1:9/v1/traces", Metrics(registry), exporter=memory, content=True
    )
    sink.append(exchange())
    assert sink.flush()
    sink.close()
    attrs = memory.get_finished_spans()[0].attributes or {}
    assert json.loads(str(attrs["gen_ai.system_instructions"])) == [
        {"type": "text", "content": "be brief"}
    ]
    (user,) = json.loads(str(attrs["gen_ai.input.messages"]))
    assert user["role"] == "user"
    assert KEY not in user["parts"][0]["content"] and "[redacted " in user["parts"][0]["content"]
    assert json.loads(str(attrs["gen_ai.output.messages"])) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "Sunny."}], "finish_reason": "stop"}]  # fmt: skip


def test_content_is_bounded_keeping_the_newest_messages() -> None:
    history = [{"role": "user", "content": f"turn {i} " + "x" * 3000} for i in range(50)]
    history.append({"role": "user", "content": "the last question"})
    ex = exchange(request_body=orjson.dumps({"model": "m", "messages": history}))
    attrs = spans.content_attributes(ex, limit=10_000)
    text = str(attrs["gen_ai.input.messages"])
    assert len(text) <= 10_000
    kept = json.loads(text)
    assert kept[-1]["parts"][0]["content"] == "the last question"
    assert "turn 0 " not in text
    assert "truncated by llmreel" in text


def test_tool_calls_and_results_map_to_the_conventions_parts() -> None:
    request = {"model": "m", "messages": [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"}]}  # fmt: skip
    attrs = spans.content_attributes(exchange(request_body=orjson.dumps(request)))
    _, call, result = json.loads(str(attrs["gen_ai.input.messages"]))
    assert call["parts"] == [{"type": "tool_call", "id": "call_1", "name": "get_weather",
                              "arguments": {"city": "Paris"}}]  # fmt: skip
    assert result["parts"][0]["type"] == "tool_call_response"
    assert result["parts"][0]["id"] == "call_1" and result["parts"][0]["response"] == "18C"


# --- where spans go ---------------------------------------------------------------------------


def test_the_endpoint_comes_from_the_option_or_the_standard_variables() -> None:
    assert traces_endpoint("", {}) is None
    assert traces_endpoint("http://127.0.0.1:4318", {}) == "http://127.0.0.1:4318/v1/traces"
    assert traces_endpoint("http://h:6006/v1/traces", {}) == "http://h:6006/v1/traces"
    langfuse = "https://cloud.langfuse.com/api/public/otel"
    assert traces_endpoint(langfuse + "/", {}) == langfuse + "/v1/traces"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}
    assert traces_endpoint("", env) == "http://collector:4318/v1/traces"
    env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = "http://tempo:4318/custom/path"
    assert traces_endpoint("", env) == "http://tempo:4318/custom/path"
    assert traces_endpoint("http://flag:4318", env) == "http://flag:4318/v1/traces"
    with pytest.raises(ValueError, match="not an http"):
        traces_endpoint("collector:4318", {})


# --- a receiver that is slow or down ----------------------------------------------------------


class Blackhole:
    """A TCP server that accepts connections and never answers: the slowest receiver."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@pytest.fixture(autouse=True)
def short_export_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK's standard variable: an export gives up (retries included) after a second."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    hole = Blackhole()
    yield hole
    hole.close()


def test_a_hung_receiver_never_blocks_the_sink_and_drops_are_counted(
    blackhole: Blackhole, registry: CollectorRegistry
) -> None:
    sink = OtlpSink(f"http://127.0.0.1:{blackhole.port}/v1/traces", Metrics(registry),
                    max_queue=4, schedule_delay_ms=1)  # fmt: skip
    sink.append(exchange())
    wait_until(lambda: blackhole.accepted, "the exporter connecting")  # an export now hangs
    for _ in range(10):
        sink.append(exchange())  # returns at once: room for 3 more, 7 dropped
    assert counted(registry, "dropped") == 7
    for conn in blackhole.accepted:  # the receiver dies mid-request
        conn.close()
    sink.close()
    assert counted(registry, "exported") == 0
    assert counted(registry, "dropped") == 7
    assert counted(registry, "failed") + counted(registry, "dropped") <= 11


def test_a_refused_connection_counts_as_failed(registry: CollectorRegistry) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    sink = OtlpSink(f"http://127.0.0.1:{port}/v1/traces", Metrics(registry), schedule_delay_ms=1)
    sink.append(exchange())
    wait_until(lambda: counted(registry, "failed") == 1, "the failed export being counted")
    sink.close()
    assert counted(registry, "exported") == 0


def test_summary_of_keeps_the_engines_summary() -> None:
    summary = ResponseSummary("m", None, "", (), "length", True, None)
    assert spans.summary_of(exchange(summary=summary)) is summary


def test_through_a_real_proxy_a_hung_receiver_costs_spans_not_requests(
    make_proxy: Callable[..., ProxyThread], fake: FakeUpstream, bundle: str,
    blackhole: Blackhole, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv(
        "OTEL_BSP_MAX_QUEUE_SIZE", "2"
    )  # the SDK's variable, which llmreel reads too
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "60")  # the export hangs all test long
    proxy = make_proxy(otlp_endpoint=f"http://127.0.0.1:{blackhole.port}")
    with http_client(proxy, bundle) as web:
        for i in range(12):
            reply = web.post(f"{fake.url}/v1/chat/completions", json={
                "model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}]})  # fmt: skip
            assert reply.status_code == 200
    registry = proxy.recorder.registry
    assert counted(registry, "dropped") == 12 - 2  # 2 wait in the hung export; no room for more
    assert counted(registry, "exported") == 0
    proxy.stop()  # gives up on the hung export after a bounded wait


class Receiver:
    """A minimal OTLP/HTTP receiver: keeps each request's headers and decoded spans."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], ExportTraceServiceRequest]] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                received.append(
                    (
                        {k.lower(): v for k, v in self.headers.items()},
                        ExportTraceServiceRequest.FromString(body),
                    )
                )
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_the_sdks_standard_variables_set_the_endpoint_and_headers(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = Receiver()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Basic%20cGs6c2s=")
    endpoint = traces_endpoint("")
    assert endpoint == receiver.url + "/v1/traces"
    sink = OtlpSink(endpoint, Metrics(registry))
    sink.append(exchange(run="r"))
    sink.close()
    try:
        assert [h["authorization"] for h, _ in receiver.requests] == ["Basic cGs6c2s="]
        names = [s.name for r in receiver.requests[0][1].resource_spans for ss in r.scope_spans
                 for s in ss.spans]  # fmt: skip
        assert sorted(names) == ["chat gpt-4o-mini", "llmreel run"]
        assert counted(registry, "exported") == 2
    finally:
        receiver.server.shutdown()


def test_the_engine_exports_only_when_an_endpoint_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmreel.engine import Engine
    from llmreel.engine.options import DEFAULTS, ConfigError

    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    engine = Engine()
    engine.configure(DEFAULTS, {"llmreel_otlp_endpoint", "llmreel_otlp_content"})
    assert engine.otlp is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9/v1/traces")
    engine.configure(DEFAULTS, {"llmreel_otlp_endpoint"})
    assert engine.otlp is not None and engine.otlp.endpoint == "http://127.0.0.1:9/v1/traces"
    assert engine.otlp.append in engine.sinks
    with pytest.raises(ConfigError, match="llmreel_otlp_endpoint"):
        engine.configure(
            {**DEFAULTS, "llmreel_otlp_endpoint": "127.0.0.1:4318"}, {"llmreel_otlp_endpoint"}
        )
    engine.close()
    assert engine.otlp is None
