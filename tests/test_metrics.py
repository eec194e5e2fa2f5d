"""Metrics on an injected registry: labels, cardinality cap, OTel buckets."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from llmreel.core.exchange import Exchange
from llmreel.metering.metrics import OTHER, LabelCap, Metrics
from llmreel.providers import Endpoint, Usage

CHAT = Endpoint("openai", "openai.chat", "chat", "openai")


def exchange(model: str, cache: str = "miss", **kw: object) -> Exchange:
    fields: dict[str, object] = {
        "id": "x", "started": 0.0, "method": "POST", "url": "https://api.openai.com/v1/chat/completions",
        "endpoint": CHAT, "cache": cache, "namespace": "default", "key": "k", "model": model,
        "status": 200, "duration_s": 0.5, "upstream_s": 0.4, "usage": Usage(input=10, output=5),
        "cost_usd": 0.001,
    }  # fmt: skip
    fields.update(kw)
    return Exchange(**fields)  # type: ignore[arg-type]


def test_label_cap_admits_a_bounded_number_of_values() -> None:
    cap = LabelCap(3)
    assert [cap(m) for m in ("a", "b", "c", "d", "a", "e")] == ["a", "b", "c", OTHER, "a", OTHER]
    assert cap(None) == OTHER  # the cap is full; "unknown" would be a fourth value


def test_model_label_overflow_goes_to_other() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, max_models=2)
    for model in ("m1", "m2", "m3", "m4"):
        metrics.observe(exchange(model))
    get = registry.get_sample_value
    assert get("llmreel_requests_total", {"provider": "openai", "model": "other", "operation": "chat",
                                          "cache": "miss", "status_class": "2xx"}) == 2  # fmt: skip
    assert get("llmreel_tokens_total", {"provider": "openai", "model": "m1", "type": "input"}) == 10


def test_two_instances_do_not_share_state() -> None:
    a, b = CollectorRegistry(), CollectorRegistry()
    Metrics(a).observe(exchange("m"))
    Metrics(b)  # would raise "Duplicated timeseries" on a shared registry
    assert b.get_sample_value("llmreel_cost_usd_total", {"provider": "openai", "model": "m"}) is None
    assert a.get_sample_value("llmreel_cost_usd_total", {"provider": "openai", "model": "m"}) == 0.001


def test_hits_are_saved_not_billed_and_offline_misses_bill_nothing() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.observe(exchange("m", cache="hit", upstream_s=None))
    metrics.observe(exchange("m", cache="offline_miss", upstream_s=None, status=412, usage=None, cost_usd=None))
    get = registry.get_sample_value
    labels = {"provider": "openai", "model": "m"}
    assert get("llmreel_saved_cost_usd_total", labels) == 0.001
    assert get("llmreel_saved_tokens_total", {**labels, "type": "output"}) == 5
    assert get("llmreel_tokens_total", {**labels, "type": "input"}) is None
    assert get("llmreel_cost_usd_total", labels) is None


def test_unpriced_usage_is_counted_not_costed() -> None:
    registry = CollectorRegistry()
    Metrics(registry).observe(exchange("private", cost_usd=None))
    assert registry.get_sample_value("llmreel_unpriced_requests_total", {"provider": "openai", "model": "private"}) == 1
    assert registry.get_sample_value("llmreel_cost_usd_total", {"provider": "openai", "model": "private"}) is None


# The explicit bucket boundaries the OpenTelemetry GenAI semantic conventions advise, written
# out here rather than read from the implementation, so a changed constant fails this test.
OTEL_DURATION_BUCKETS = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
]  # fmt: skip
OTEL_TOKEN_BUCKETS = [
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
]  # fmt: skip


def bucket_bounds(registry: CollectorRegistry, histogram: str) -> list[float]:
    """The finite `le` bounds a histogram exports, in order (one series' worth)."""
    bounds = {
        float(s.labels["le"])
        for metric in registry.collect() if metric.name == histogram
        for s in metric.samples if s.name == f"{histogram}_bucket" and s.labels["le"] != "+Inf"
    }  # fmt: skip
    return sorted(bounds)


def test_otel_histograms_use_the_conventions_buckets() -> None:
    registry = CollectorRegistry()
    Metrics(registry).observe(exchange("m", stream=True, ttfc_s=0.05))
    for name in ("gen_ai_client_operation_duration_seconds",
                 "gen_ai_client_operation_time_to_first_chunk_seconds"):  # fmt: skip
        assert bucket_bounds(registry, name) == OTEL_DURATION_BUCKETS, name
    assert bucket_bounds(registry, "gen_ai_client_token_usage") == OTEL_TOKEN_BUCKETS
    labels = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai", "gen_ai_request_model": "m"}
    assert registry.get_sample_value("gen_ai_client_operation_time_to_first_chunk_seconds_count", labels) == 1
    assert registry.get_sample_value("gen_ai_client_token_usage_sum", {**labels, "gen_ai_token_type": "output"}) == 5
    assert registry.get_sample_value(
        "gen_ai_client_token_usage_bucket", {**labels, "gen_ai_token_type": "output", "le": "16.0"}
    ) == 1
