"""Prometheus metrics: llmreel's own counters and the OpenTelemetry GenAI histograms.

Every metric lives on a `CollectorRegistry` that is passed in, never the global default one, so
tests and mitmproxy script reloads each get a clean set. Label cardinality is bounded: no keys,
ids, prompts or users are labels, and the number of distinct model values is capped, with the
overflow counted under `other`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from llmreel.storage.lmdbstore import WRITE_ERROR_REASONS
from llmreel.storage.shared import ERROR_REASONS as SHARED_ERROR_REASONS

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from llmreel.core.exchange import Exchange
    from llmreel.storage.lmdbstore import StoreStats

log = logging.getLogger(__name__)

# OpenTelemetry GenAI semantic-convention bucket boundaries.
DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
TOKEN_BUCKETS = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
#: Shared-tier (Redis) calls: `llmreel_shared_seconds{op}`.
SHARED_OPS = ("get", "put", "lease")
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
#: Why a complete response was not recorded (`llmreel_recordings_skipped_total{reason}`).
SKIP_REASONS = ("too_large", "copy_failed")
#: What became of a span sent to --otlp-endpoint: `llmreel_otlp_spans_{outcome}_total`.
OTLP_SPAN_OUTCOMES = {
    "exported": "Spans the OTLP receiver accepted (--otlp-endpoint).",
    "failed": "Spans whose export failed: the OTLP receiver was down, too slow, or refused them.",
    "dropped": "Spans never sent because the export queue was full (the receiver is slower "
    "than the traffic).",
}
TOKEN_TYPES = ("input", "output", "cache_read", "cache_write", "reasoning")
OTHER = "other"
DEFAULT_MAX_MODELS = 200


def llmreel_version() -> str:
    try:
        return version("llmreel")
    except PackageNotFoundError:
        return "unknown"


class LabelCap:
    """Admits the first `limit` distinct values of a label; later ones become `other`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        value = value or "unknown"
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        return OTHER


class StoreCollector(Collector):
    """Reads store size and entry count at scrape time."""

    def __init__(self, stats: Callable[[], StoreStats | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        stats = self._stats()
        if stats is None:
            return []
        size = GaugeMetricFamily(
            "llmreel_store_size_bytes", "Bytes used by the recording store's data file."
        )
        size.add_metric([], stats.size_bytes)
        entries = GaugeMetricFamily("llmreel_store_entries", "Recordings in the store.")
        entries.add_metric([], stats.entries)
        return [size, entries]


class Metrics:
    """All of llmreel's metrics, registered on one registry."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        store_stats: Callable[[], StoreStats | None] = lambda: None,
        max_models: int = DEFAULT_MAX_MODELS,
    ) -> None:
        self.registry = registry
        self.model_label = LabelCap(max_models)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = registry
        self.requests = Counter(
            "llmreel_requests",
            "Proxied LLM requests, by cache outcome and response status class.",
            ["provider", "model", "operation", "cache", "status_class"],
            registry=r,
        )
        self.tokens = Counter(
            "llmreel_tokens",
            "Tokens billed upstream (input includes cache tokens; output includes reasoning).",
            ["provider", "model", "type"],
            registry=r,
        )
        self.cost = Counter(
            "llmreel_cost_usd", "US dollars billed upstream.", ["provider", "model"], registry=r
        )
        self.saved_tokens = Counter(
            "llmreel_saved_tokens",
            "Tokens that cache hits avoided paying for.",
            ["provider", "model", "type"],
            registry=r,
        )
        self.saved_cost = Counter(
            "llmreel_saved_cost_usd",
            "US dollars that cache hits avoided.",
            ["provider", "model"],
            registry=r,
        )
        self.unpriced = Counter(
            "llmreel_unpriced_requests",
            "Responses with usage whose model has no known price (their cost is unknown).",
            ["provider", "model"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "llmreel_upstream_errors",
            "Upstream failures: HTTP error statuses, timeouts, resets, cut streams.",
            ["provider", "error_type"],
            registry=r,
        )
        self.store_write_errors = Counter(
            "llmreel_store_write_errors",
            "Recordings that could not be written (disk full, map full, I/O error).",
            ["reason"],
            registry=r,
        )
        for reason in WRITE_ERROR_REASONS:  # zero series, so rate() has data before a failure
            self.store_write_errors.labels(reason)
        self.recordings_skipped = Counter(
            "llmreel_recordings_skipped",
            "Complete 2xx responses that reached the client but were deliberately not recorded: "
            "too_large (over --max-record-bytes) or copy_failed (llmreel's copy of the stream "
            "was damaged).",
            ["reason"],
            registry=r,
        )
        for reason in SKIP_REASONS:
            self.recordings_skipped.labels(reason)
        self.spend = Gauge(
            "llmreel_spend_usd",
            "US dollars billed upstream since this proxy started (what --budget-usd counts).",
            registry=r,
            multiprocess_mode="sum",  # --workers: the proxy's spend is every worker's
        )
        self.budget = Gauge(
            "llmreel_budget_usd",
            "The spending limit set with --budget-usd (absent when there is none).",
            registry=r,
            multiprocess_mode="max",
        )
        self.budget_refusals = Counter(
            "llmreel_budget_refusals",
            "Upstream calls refused because the budget was spent.",
            registry=r,
        )
        # --otlp-endpoint (docs/otel.md): what became of each span.
        self.otlp_spans = {
            outcome: Counter(f"llmreel_otlp_spans_{outcome}", doc, registry=r)
            for outcome, doc in OTLP_SPAN_OUTCOMES.items()
        }
        self.build_info = Gauge(
            "llmreel_build_info", "llmreel build information.", ["version"], registry=r,
            multiprocess_mode="max",
        )
        self.build_info.labels(version=llmreel_version()).set(1)
        gen_ai = ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model"]
        self.duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration, as the client saw it.",
            [*gen_ai, "error_type"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Tokens billed upstream per operation, by token type (input or output).",
            [*gen_ai, "gen_ai_token_type"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.ttfc = Histogram(
            "gen_ai_client_operation_time_to_first_chunk_seconds",
            "Time from the request being sent to the first streamed chunk.",
            gen_ai,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "llmreel_upstream_duration_seconds",
            "Time spent waiting on the upstream, from forwarding the request to its last byte.",
            ["provider"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "llmreel_overhead_seconds",
            "Time llmreel itself added to an exchange (total minus upstream time).",
            ["cache"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        registry.register(StoreCollector(store_stats))
        # The shared tier (--shared, docs/shared.md). Registered with zero series whether or
        # not it is on, so dashboards have data and rate() works before the first event.
        self.shared_hits = Counter(
            "llmreel_shared_hits", "Lookups that the local store missed and Redis answered.",
            registry=r,
        )
        self.shared_misses = Counter(
            "llmreel_shared_misses", "Lookups that missed both the local store and Redis.",
            registry=r,
        )
        self.shared_writes = Counter(
            "llmreel_shared_writes", "Recordings written to Redis.", registry=r
        )
        self.shared_errors = Counter(
            "llmreel_shared_errors",
            "Shared-tier calls that failed and were skipped (traffic went on with the local store "
            "and the upstream): timeout, connection, auth, protocol, corrupt, too_large.",
            ["reason"],
            registry=r,
        )
        for reason in SHARED_ERROR_REASONS:
            self.shared_errors.labels(reason)
        self.shared_seconds = Histogram(
            "llmreel_shared_seconds", "Time of shared-tier calls to Redis, by operation.",
            ["op"], buckets=OVERHEAD_BUCKETS, registry=r,
        )  # fmt: skip
        for op in SHARED_OPS:
            self.shared_seconds.labels(op)

    def observe(self, ex: Exchange) -> None:
        """Account for one finished exchange."""
        ep = ex.endpoint
        model = self.model_label(ex.model or ex.response_model)
        provider = ep.provider
        self._child(self.requests, provider, model, ep.operation, ex.cache, ex.status_class).inc()
        gen_ai = (ep.operation, ep.otel_provider, model)
        self._child(self.duration, *gen_ai, ex.error_type or "").observe(ex.duration_s)
        if ex.upstream_s is not None:
            self._child(self.upstream_duration, provider).observe(ex.upstream_s)
            self._child(self.overhead, ex.cache).observe(max(ex.duration_s - ex.upstream_s, 0.0))
        else:
            self._child(self.overhead, ex.cache).observe(ex.duration_s)
        if ex.error_type is not None and ex.billed:
            self._child(self.upstream_errors, provider, ex.error_type).inc()
        if ex.ttfc_s is not None and ex.stream and ex.billed:
            self._child(self.ttfc, *gen_ai).observe(ex.ttfc_s)
        usage = ex.usage
        if usage is None:
            return
        counts = usage.as_dict()
        if ex.cache == "hit":
            self._add_tokens(self.saved_tokens, provider, model, counts)
            if ex.cost_usd is not None:
                self._child(self.saved_cost, provider, model).inc(ex.cost_usd)
            return
        if not ex.billed:
            return
        self._add_tokens(self.tokens, provider, model, counts)
        self._child(self.token_usage, *gen_ai, "input").observe(usage.input)
        self._child(self.token_usage, *gen_ai, "output").observe(usage.output)
        if ex.cost_usd is None:
            self._child(self.unpriced, provider, model).inc()
        else:
            self._child(self.cost, provider, model).inc(ex.cost_usd)

    def store_write_failed(self, reason: str) -> None:
        self.store_write_errors.labels(reason).inc()

    def recording_skipped(self, reason: str) -> None:
        self.recordings_skipped.labels(reason).inc()

    def _child(self, metric: Any, *labels: str) -> Any:
        # labels() takes a lock and rebuilds a tuple on every call; the set of label values is
        # bounded (see LabelCap), so the children are cached here.
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _add_tokens(
        self, counter: Counter, provider: str, model: str, counts: dict[str, int]
    ) -> None:
        for kind in TOKEN_TYPES:
            if counts[kind]:
                self._child(counter, provider, model, kind).inc(counts[kind])


class WorkerMetrics:
    """What only the supervisor of `--workers N` knows: its workers. (The workers' own metrics
    reach the same `/metrics` through prometheus_client's multiprocess mode.)"""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.workers = Gauge(
            "llmreel_workers", "Worker processes serving (--workers).", registry=registry
        )
        self.restarts = Counter(
            "llmreel_worker_restarts",
            "Worker processes that died and were started again.",
            registry=registry,
        )


def multiprocess_total(path: str, name: str) -> float:
    """A metric summed over every process writing to `path` (prometheus_client's multiprocess
    mode): what a worker of `--workers N` reads to know the whole proxy's spend."""
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return sum(s.value for m in registry.collect() if m.name == name for s in m.samples)
