"""Accounting: an ended call becomes an `Exchange`, priced, counted and handed to every sink."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from llmreel.core.bounded import BoundedSet
from llmreel.core.exchange import Exchange, RecordingRef
from llmreel.core.ids import new_id
from llmreel.engine.flowstate import FlowState
from llmreel.metering.metrics import Metrics
from llmreel.metering.pricing import Pricer
from llmreel.metering.report import Miss, RunReport
from llmreel.providers import ResponseSummary, Usage
from llmreel.storage.records import Recording

log = logging.getLogger("llmreel")

#: How many (provider, model) pairs without a price are remembered, to warn once about each.
UNPRICED_WARN_CAP = 1000


@dataclass(slots=True)
class Outcome:
    """How a call ended, as the engine saw it."""

    now: float
    body: bytes
    status: int | None
    response_headers: list[tuple[str, str]]
    usage: Usage | None = None
    response_model: str | None = None
    summary: ResponseSummary | None = None
    recorded: bool = False
    error: str | None = None
    error_type: str | None = None


class Accountant:
    """Prices each exchange, feeds the metrics and the run report, and calls the sinks."""

    def __init__(self, metrics: Metrics, report: RunReport) -> None:
        self.metrics = metrics
        self.report = report
        self.pricer = Pricer()
        self.sinks: list[Callable[[Exchange], None]] = []
        self.run = ""
        """The run id every exchange is tagged with (`llmreel run`), or empty."""
        self.spent_usd = 0.0
        """US dollars billed upstream since start, as priced here."""
        self._unpriced_warned: BoundedSet[tuple[str, str]] = BoundedSet(UNPRICED_WARN_CAP)

    def account(self, state: FlowState, out: Outcome) -> Exchange:
        ep = state.endpoint
        error, error_type = out.error, out.error_type
        if (
            error_type is None
            and out.status is not None
            and out.status >= 400
            and state.forwarded_at
        ):
            error_type = str(out.status)
        if state.outcome == "offline_miss" and error is None:
            error = f"llmreel cache miss (offline). {state.explanation}".strip()
            error_type = "offline_miss"
        elif state.outcome == "budget_refused" and error is None:
            error = "llmreel budget spent (--budget-usd): the request was not sent"
            error_type = "budget_exceeded"
        model = out.response_model or state.model
        cost = None
        if out.usage is not None:
            cost = self.pricer.cost(ep.provider, model, out.usage)
            if cost is None and self._unpriced_warned.first_time((ep.provider, model or "")):
                log.warning(
                    "no price known for %s model %s: its cost is unknown. Add it to a "
                    "--prices file.", ep.provider, model,
                )  # fmt: skip
        tee = state.tee
        exchange = Exchange(
            id=new_id(),
            started=state.started_unix,
            method=state.method,
            url=state.url,
            endpoint=ep,
            cache=state.outcome or state.plan.outcome,
            namespace=state.namespace,
            key=state.key,
            model=state.model,
            response_model=out.response_model,
            status=out.status,
            error=error,
            error_type=error_type,
            duration_s=max(out.now - state.started, 0.0),
            upstream_s=(out.now - state.forwarded_at) if state.forwarded_at is not None else None,
            ttfc_s=ttfc(state),
            stream=tee is not None or bool(state.replay and state.replay.is_stream),
            usage=out.usage,
            cost_usd=cost,
            recorded=out.recorded,
            explanation=state.explanation,
            client=state.client,
            listener=state.listener,
            request_headers=state.request_headers,
            response_headers=out.response_headers,
            request_body=state.request_body,
            response_body=out.body,
            summary=out.summary,
            session=state.session,
            run=self.run,
            context=state.context,
            replayed=_ref(state.replay) if state.replay is not None else None,
        )
        if cost is not None and exchange.billed:
            self.spent_usd += cost
            self.metrics.spend.set(self.spent_usd)
            self.report.spent_usd = self.spent_usd
        self.metrics.observe(exchange)
        if exchange.cache in ("miss", "offline_miss"):
            self.report.miss(Miss(exchange.method, exchange.url, state.key, state.namespace,
                                  exchange.cache, state.explanation, recorded=exchange.recorded))  # fmt: skip
        elif exchange.status is None:
            self.report.errors += 1
        for sink in self.sinks:
            try:
                sink(exchange)
            except Exception:
                log.exception("exchange sink %r failed", sink)
        return exchange


def _ref(rec: Recording) -> RecordingRef:
    return RecordingRef(rec.namespace, rec.key, rec.seq, rec.recorded_at)


def ttfc(state: FlowState) -> float | None:
    """Time from forwarding the request to the first streamed chunk."""
    tee = state.tee
    if tee is None or tee.first_chunk_at is None or state.forwarded_at is None:
        return None
    return round(tee.first_chunk_at - state.forwarded_at, 6)
