"""OpenTelemetry export: every exchange becomes one span, sent over OTLP/HTTP (docs/otel.md).

`OtlpSink.append` is one of the engine's sinks and runs on the proxy's event loop, so it only
counts and enqueues. A worker thread turns exchanges into spans (`llmreel.metering.spans`) and
hands them to the SDK's `BatchSpanProcessor`, whose own thread exports them. Neither a failing
nor a slow receiver can touch traffic: at most `max_queue` spans wait (exchanges not yet mapped
plus spans not yet handed to the exporter); past that, new ones are dropped and counted in
`llmreel_otlp_spans_dropped_total`, never queued without bound. The SDK's processor gets the
same capacity, so its own queue (which would drop silently) never fills.

The tracer provider is private to the sink (never the global one), so reloads and tests each
get their own. Group root spans (one per session or run, see `spans`) are sent when the group
has been idle for `GROUP_IDLE_S`, when too many groups are open, and when the sink closes.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator

from llmreel.core.bounded import BoundedSet
from llmreel.log.throttle import ThrottledLog
from llmreel.metering import spans
from llmreel.metering.metrics import llmreel_version
from llmreel.metering.otlpconfig import display

if TYPE_CHECKING:
    from llmreel.core.exchange import Exchange
    from llmreel.metering.metrics import Metrics

__all__ = ["DEFAULT_MAX_QUEUE", "OtlpSink"]

log = logging.getLogger(__name__)

#: Spans that may wait to be exported (OTEL_BSP_MAX_QUEUE_SIZE overrides it, as in the SDK).
DEFAULT_MAX_QUEUE: Final = 2048
#: A group's root span is sent once no exchange of it was seen for this long.
GROUP_IDLE_S: Final = 300.0
#: Groups waiting for their root span; past it, the least recently active one is sent.
MAX_OPEN_GROUPS: Final = 10_000
#: Groups whose root span was sent (so that none is sent twice by this process).
SENT_GROUPS_CAP: Final = 100_000
#: How long closing waits for the last spans to be exported before giving up on them.
CLOSE_TIMEOUT_S: Final = 5.0
_STOP: Final = object()


class _Ids(IdGenerator):
    """Random ids, except for a group's root span, whose ids are derived from the group."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()
        self.pinned: tuple[int, int] | None = None

    def generate_span_id(self) -> int:
        if self.pinned is not None:
            return self.pinned[1]
        return self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        if self.pinned is not None:
            return self.pinned[0]
        return self._random.generate_trace_id()


class _Counting(SpanExporter):
    """Wraps the real exporter: counts what it exported and what failed, and frees capacity."""

    def __init__(self, inner: SpanExporter, done: Callable[[int, bool], None]) -> None:
        self.inner = inner
        self._done = done

    def export(self, batch: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(batch)
        except Exception:
            log.exception("the OTLP exporter failed")
            result = SpanExportResult.FAILURE
        self._done(len(batch), result is SpanExportResult.SUCCESS)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


@dataclass(slots=True)
class _OpenGroup:
    group: spans.Group
    start: float
    end: float
    seen_at: float
    exchanges: int = 0


class OtlpSink:
    """Sends every exchange it is given to an OTLP/HTTP receiver as a GenAI span.

    `exporter` replaces the OTLP exporter (tests pass the SDK's in-memory one); `endpoint` is
    the full traces URL (`otlpconfig.traces_endpoint`). Headers, timeouts,
    TLS and compression come from the SDK's standard variables (`OTEL_EXPORTER_OTLP_HEADERS`,
    ...). `content` adds prompts and answers (masked like the log).
    """

    def __init__(
        self,
        endpoint: str,
        metrics: Metrics,
        *,
        content: bool = False,
        content_limit: int = spans.DEFAULT_CONTENT_LIMIT,
        max_queue: int | None = None,
        exporter: SpanExporter | None = None,
        schedule_delay_ms: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = endpoint
        self.content = content
        self.content_limit = content_limit
        self.max_queue = max_queue or _env_int("OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_MAX_QUEUE)
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()
        self._pending = 0
        """Spans accepted and not yet through the exporter (mapped or not)."""
        self._errors = ThrottledLog(log)
        self._ids = _Ids()
        inner = exporter if exporter is not None else OTLPSpanExporter(endpoint=endpoint)
        self._processor = BatchSpanProcessor(
            _Counting(inner, self._exported),
            max_queue_size=self.max_queue,
            max_export_batch_size=min(512, self.max_queue),
            schedule_delay_millis=schedule_delay_ms,
        )
        self._provider = TracerProvider(
            resource=Resource.create(
                {"service.name": "llmreel", "service.version": llmreel_version()}
            ),
            id_generator=self._ids,
        )
        self._provider.add_span_processor(self._processor)
        self._tracer = self._provider.get_tracer("llmreel", llmreel_version())
        self._groups: OrderedDict[tuple[str, str], _OpenGroup] = OrderedDict()
        self._sent_groups: BoundedSet[tuple[str, str]] = BoundedSet(SENT_GROUPS_CAP)
        self._inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="llmreel-otlp", daemon=True)
        self._worker.start()

    # --- the event loop's side ----------------------------------------------------------------

    def append(self, ex: Exchange) -> None:
        """Queue `ex` for export, or count it as dropped when the queue is full. Never blocks."""
        if not self._admit(1):
            return
        self._inbox.put(ex)

    def _admit(self, n: int, *, closing: bool = False) -> bool:
        with self._lock:
            if (self._closed and not closing) or self._pending + n > self.max_queue:
                admitted = False
            else:
                self._pending += n
                admitted = True
        if not admitted:
            self._metrics.otlp_spans["dropped"].inc(n)
        return admitted

    def _exported(self, n: int, ok: bool) -> None:
        with self._lock:
            self._pending = max(self._pending - n, 0)
        self._metrics.otlp_spans["exported" if ok else "failed"].inc(n)
        if not ok:
            self._errors.error(
                "cannot export spans to %s (counted in llmreel_otlp_spans_failed_total; traffic "
                "is unaffected). Is the receiver up? Check --otlp-endpoint and "
                "OTEL_EXPORTER_OTLP_HEADERS.", display(self.endpoint),
            )  # fmt: skip

    # --- the worker ---------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            try:
                item = self._inbox.get(timeout=min(GROUP_IDLE_S, 30.0))
            except queue.Empty:
                item = None
            if item is _STOP:
                break
            if item is not None:
                try:
                    self._span(item)  # type: ignore[arg-type]
                except Exception:
                    self._exported(1, False)
                    log.exception("cannot turn an exchange into a span")
            self._send_idle_groups()
        for key in list(self._groups):
            self._send_group(key)

    def _span(self, ex: Exchange) -> None:
        summary = spans.summary_of(ex)
        attrs = spans.attributes(ex, summary)
        if self.content:
            attrs.update(spans.content_attributes(ex, self.content_limit))
        group = spans.group_of(ex)
        parent = None
        if group is not None:
            self._open(group, ex)
            parent = trace.set_span_in_context(trace.NonRecordingSpan(trace.SpanContext(
                group.trace_id, group.span_id, is_remote=True,
                trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
            )))  # fmt: skip
        span = self._tracer.start_span(
            spans.span_name(ex), context=parent, kind=trace.SpanKind.CLIENT,
            attributes=attrs, start_time=_ns(ex.started),
        )  # fmt: skip
        if spans.is_error(ex):
            span.set_status(trace.Status(trace.StatusCode.ERROR, spans.error_description(ex)))
        span.end(end_time=_ns(ex.started + ex.duration_s))

    def _open(self, group: spans.Group, ex: Exchange) -> None:
        key = (group.kind, group.id)
        if key in self._sent_groups:
            return  # its root span is out; later spans still hang under it
        end = ex.started + ex.duration_s
        found = self._groups.get(key)
        if found is None:
            found = self._groups[key] = _OpenGroup(group, ex.started, end, self._clock())
            while len(self._groups) > MAX_OPEN_GROUPS:
                self._send_group(next(iter(self._groups)))
        found.start = min(found.start, ex.started)
        found.end = max(found.end, end)
        found.seen_at = self._clock()
        found.exchanges += 1
        self._groups.move_to_end(key)

    def _send_idle_groups(self) -> None:
        now = self._clock()
        while self._groups:
            key, oldest = next(iter(self._groups.items()))
            if now - oldest.seen_at < GROUP_IDLE_S:
                return
            self._send_group(key)

    def _send_group(self, key: tuple[str, str]) -> None:
        found = self._groups.pop(key)
        self._sent_groups.first_time(key)
        if not self._admit(1, closing=True):
            return
        g = found.group
        self._ids.pinned = (g.trace_id, g.span_id)
        try:
            span = self._tracer.start_span(
                f"llmreel {g.kind}", kind=trace.SpanKind.INTERNAL, start_time=_ns(found.start),
                attributes=spans.group_attributes(g, found.exchanges),
            )  # fmt: skip
        finally:
            self._ids.pinned = None
        span.end(end_time=_ns(found.end))

    # --- shutdown -----------------------------------------------------------------------------

    def flush(self, timeout_s: float = CLOSE_TIMEOUT_S) -> bool:
        """Wait until every exchange appended so far was exported or failed (for tests)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._processor.force_flush()
            with self._lock:
                if self._pending == 0:
                    return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        """Send the open groups' root spans and what is queued, waiting `CLOSE_TIMEOUT_S` at
        most (a dead receiver must not hold up the proxy's exit); the rest is given up."""
        with self._lock:
            if self._closed:
                return
            self._closed = True  # exchanges that end from now on are dropped (and counted)
        self._inbox.put(_STOP)
        self._worker.join(CLOSE_TIMEOUT_S)
        # The SDK's shutdown waits up to 30 s for a hung export: give it its own thread.
        done = threading.Thread(
            target=self._provider.shutdown, name="llmreel-otlp-close", daemon=True
        )
        done.start()
        done.join(CLOSE_TIMEOUT_S)
        with self._lock:
            left = self._pending
        if left:
            log.warning("%d span(s) were not exported before exit: the OTLP receiver at %s is "
                        "slow or down", left, display(self.endpoint))  # fmt: skip


def _ns(unix: float) -> int:
    # Microseconds first: a double holds today's Unix time in nanoseconds only to ~256 ns.
    return round(unix * 1e6) * 1000


def _env_int(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default
