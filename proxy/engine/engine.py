"""The engine: one LLM call from request to log, driven by the addon (or a test) step by step.

    state = engine.begin(head)            # classify, key, plan; None: not an LLM call
    answer = await engine.decide(state)   # a Recording to replay, an ErrorReply, or None: forward
    tee = engine.tee(state, ...)          # when the answer streams, its recording tee
    engine.finish(state, response)        # record, account, log
    engine.fail(state, message)           # or: the call broke

Failure policy: llmreel must never be the reason an agent's call fails. A recording that cannot
be written is logged and counted, and the response still reaches the client. The one exception
is offline mode, where a miss is answered with a clear error instead of reaching the network.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry

from llmreel.core.bounded import BoundedCounter, BoundedSet
from llmreel.core.diff import explain
from llmreel.core.errors import (
    BAD_REQUEST_STATUS,
    ErrorReply,
    budget_spent,
    error_reply,
    offline_miss,
)
from llmreel.core.failures import failure_type
from llmreel.core.keys import KeyConfig
from llmreel.core.lookup import Found, lookup
from llmreel.core.modes import CONTROLS, MODES, plan
from llmreel.core.pacing import parse_pace
from llmreel.core.redact import HeaderMasker, credential_of, credential_scope
from llmreel.core.singleflight import RemoteFlights, SingleFlight, flight_key
from llmreel.core.timeparse import parse_duration
from llmreel.core.wire import (
    CONTEXT_HEADER,
    CONTROL_HEADER,
    NAMESPACE_HEADER,
    SESSION_HEADER,
    StreamTee,
    is_event_stream,
    masked_url,
    recordable_headers,
)
from llmreel.engine.accounting import Accountant, Outcome, ttfc
from llmreel.engine.control import Contexts, ControlServer, Recent
from llmreel.engine.flowstate import FlowState
from llmreel.engine.handoff import LoopHandoff
from llmreel.engine.keying import Keyer
from llmreel.engine.options import DEFAULTS, ConfigError
from llmreel.engine.pacer import Pacer
from llmreel.engine.shared import SharedTier, configure_shared, lookup_shared
from llmreel.log.exchangelog import ExchangeLog
from llmreel.log.jsonl import JsonlSink
from llmreel.log.throttle import ThrottledLog
from llmreel.metering.metrics import Metrics
from llmreel.metering.otlpconfig import display, traces_endpoint
from llmreel.metering.pricing import Pricer, load_overrides
from llmreel.metering.report import RunReport
from llmreel.providers import (
    DEFAULT_HOSTS,
    HostMap,
    ResponseSummary,
    Usage,
    classify,
    summarize,
)
from llmreel.providers.hosts import parse_host_mappings
from llmreel.storage.leases import FileFlights, lease_dir
from llmreel.storage.lmdbstore import LmdbStore, Store, StoreError, validate_namespace
from llmreel.storage.records import Recording
from llmreel.storage.stores import open_store
from llmreel.storage.usedtimes import UsedTimes

if TYPE_CHECKING:
    from llmreel.metering.otel import OtlpSink

log = logging.getLogger("llmreel")

SINGLE_FLIGHT_WAIT_S = 600.0
#: How often a follower of another process's flight looks for its recording.
REMOTE_POLL_S = 0.02
#: Distinct requests whose occurrences sequence mode counts; past it the oldest counts restart.
SEQUENCE_CAP = 200_000
#: Distinct keys whose staleness (`--max-age`) is warned about once.
STALE_WARN_CAP = 10_000


@dataclass(frozen=True, slots=True)
class RequestHead:
    """What the engine needs of a request, as plain data. The addon fills it from a flow."""

    method: str
    scheme: str
    host: str
    port: int
    path: str
    """Without the query string."""
    query: list[tuple[str, str]]
    headers: list[tuple[str, str]]
    """After llmreel's own control headers were taken out (see `controls`)."""
    read_body: Callable[[], bytes]
    """The content-decoded body; called only for LLM calls."""
    controls: Mapping[str, str]
    """llmreel's request headers (`llmreel-cache`, `llmreel-namespace`), lower-case names."""
    started_unix: float = 0.0
    client: str = ""
    listener: str = ""
    context: str = ""
    """A control API context token from the proxy URL's user name (the header is in
    `controls`)."""


@dataclass(frozen=True, slots=True)
class ResponseInfo:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    """Content-decoded: for a teed stream, the tee's copy, decoded."""


class Occurrences(Protocol):
    def next(self, value: tuple[str, str]) -> int: ...
    def clear(self) -> None: ...


class Engine:
    """Records LLM calls into a store, replays them, and accounts for every exchange."""

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        store_factory: Callable[[str], Store] = open_store,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._store_factory = store_factory
        self._clock = clock
        self._wall = wall
        self.store: Store | None = None
        self.metrics = Metrics(self.registry, store_stats=self._store_stats)
        self.report = RunReport()
        self.accountant = Accountant(self.metrics, self.report)
        self.accountant.sinks.append(self._remember)
        self.flights = SingleFlight(SINGLE_FLIGHT_WAIT_S)
        self._file_flights: FileFlights | None = None
        self.flight_locks = False
        """Single flight across the processes on this store (lock files): on in workers."""
        self.extra_flights: list[RemoteFlights] = []
        """Single-flight tiers beyond the machine (a shared Redis), asked after the lock files."""
        self._keyer = Keyer(KeyConfig())
        self._mask_headers = HeaderMasker()
        self.hosts: HostMap = DEFAULT_HOSTS
        self.mode = "auto"
        self.default_namespace = "default"
        self.sequence = False
        self.explain_misses = False
        self.max_age_s: float | None = None
        self.max_record_bytes: int = DEFAULTS["llmreel_max_record_bytes"]
        self.budget_usd: float | None = None
        self.contexts = Contexts()
        self.recent = Recent()
        self.control = ControlServer(self.contexts, self.recent, self.report)
        self.pacer: Pacer | None = None
        """Serves replayed streams with their recorded timing (`--replay-pace`); None: fast."""
        self.exchange_log: ExchangeLog | None = None
        self.jsonl: JsonlSink | None = None
        self.otlp: OtlpSink | None = None
        """Spans to an OTLP receiver (`--otlp-endpoint`, docs/otel.md)."""
        self._used: UsedTimes | None = None
        self._scope_salt: bytes | None = None
        self.occurrences: Occurrences = BoundedCounter(SEQUENCE_CAP)
        """Counts identical requests for `--sequence` (shared by the processes of --workers)."""
        self.total_spent: Callable[[], float] = lambda: self.accountant.spent_usd
        """Dollars spent upstream, for --budget-usd: every worker's, with --workers."""
        self._stale_warned: BoundedSet[str] = BoundedSet(STALE_WARN_CAP)
        self._write_errors = ThrottledLog(log)
        self.shared: SharedTier | None = None
        """The shared tier (`--shared`): Redis behind the local store; None: off."""
        self._handoff: LoopHandoff | None = None

    @property
    def key_config(self) -> KeyConfig:
        return self._keyer.config

    @key_config.setter
    def key_config(self, config: KeyConfig) -> None:
        self._keyer = Keyer(config)  # keys remembered under another config no longer hold

    @property
    def sinks(self) -> list[Callable[[Any], None]]:
        return self.accountant.sinks

    @property
    def pricer(self) -> Pricer:
        return self.accountant.pricer

    # --- configuration ------------------------------------------------------------------------

    def configure(self, values: Mapping[str, Any], updated: Collection[str]) -> None:
        """Apply option values (names as in `OPTIONS`); only the `updated` ones are read.

        Raises `ConfigError` with the option's name and what is wrong.
        """
        v = {**DEFAULTS, **values}
        if "llmreel_store" in updated:
            self._open_store(v["llmreel_store"])
        if {"llmreel_store", "llmreel_log_retention", "llmreel_log_embeddings"} & set(updated):
            retention = _duration(v, "llmreel_log_retention")
            # The log lives beside LMDB recordings; an export directory (committed to git) has
            # no log, by design.
            self._swap_sink("exchange_log", ExchangeLog(self.store, retention_s=retention or None,
                                                        embeddings=bool(v["llmreel_log_embeddings"]))
                            if isinstance(self.store, LmdbStore) else None)  # fmt: skip
        if {"llmreel_log_file", "llmreel_log_bodies"} & set(updated):
            path = v["llmreel_log_file"]
            try:
                jsonl = JsonlSink(path, bodies=v["llmreel_log_bodies"]) if path else None
            except OSError as exc:
                raise ConfigError(f"llmreel_log_file: {exc}") from exc
            self._swap_sink("jsonl", jsonl)
        if {"llmreel_otlp_endpoint", "llmreel_otlp_content"} & set(updated):
            self._configure_otlp(v["llmreel_otlp_endpoint"], bool(v["llmreel_otlp_content"]))
        if "llmreel_mode" in updated:
            if v["llmreel_mode"] not in MODES:
                raise ConfigError(
                    f"llmreel_mode: {v['llmreel_mode']!r} is not one of {', '.join(MODES)}"
                )
            self.mode = v["llmreel_mode"]
        if "llmreel_namespace" in updated:
            try:
                self.default_namespace = validate_namespace(v["llmreel_namespace"])
            except ValueError as exc:
                raise ConfigError(f"llmreel_namespace: {exc}") from exc
        if "llmreel_hosts" in updated:
            try:
                self.hosts = DEFAULT_HOSTS.merged(parse_host_mappings(v["llmreel_hosts"]))
            except ValueError as exc:
                raise ConfigError(f"llmreel_hosts: {exc}") from exc
        # >>> shared tier (engine/shared.py)
        shared = configure_shared(self.shared, v, updated, self.metrics)
        if shared is not self.shared:
            self.extra_flights[:] = [t for t in self.extra_flights if t is not self.shared]
            self.shared = shared
            if shared is not None:  # single flight across machines, after the lock files
                self.extra_flights.append(shared)
        # <<< shared tier
        if {"llmreel_scope_by_credential", "llmreel_store", "llmreel_shared"} & set(updated):
            self._scope_salt = None
            if v["llmreel_scope_by_credential"]:
                if not isinstance(self.store, LmdbStore):
                    raise ConfigError(
                        "llmreel_scope_by_credential needs an LMDB store, which keeps the salt"
                    )
                self._scope_salt = self.store.secret_salt()
                if self.shared is not None:  # one scope for a credential on every machine
                    self._scope_salt = self.shared.salt(self._scope_salt)
        if "llmreel_sequence" in updated:
            self.sequence = bool(v["llmreel_sequence"])
        if "llmreel_explain_misses" in updated:
            self.explain_misses = bool(v["llmreel_explain_misses"])
        if "llmreel_max_age" in updated:
            self.max_age_s = _duration(v, "llmreel_max_age") if v["llmreel_max_age"] else None
        if self.shared is not None:
            self.shared.max_age_s = self.max_age_s
        if "llmreel_max_record_bytes" in updated:
            if int(v["llmreel_max_record_bytes"]) <= 0:
                raise ConfigError("llmreel_max_record_bytes: must be a positive number of bytes")
            self.max_record_bytes = int(v["llmreel_max_record_bytes"])
        if "llmreel_budget_usd" in updated:
            raw = str(v["llmreel_budget_usd"]).strip().lstrip("$")
            try:
                budget = float(raw) if raw else None
            except ValueError:
                budget = -1.0
            if budget is not None and not budget >= 0:
                raise ConfigError(
                    f"llmreel_budget_usd: {raw!r} is not an amount of US dollars, e.g. 5 or 0.50"
                )
            self.budget_usd = budget
            self.report.budget_usd = budget
            if budget is not None:
                self.metrics.budget.set(budget)
        if "llmreel_replay_pace" in updated:
            try:
                factor = parse_pace(str(v["llmreel_replay_pace"]))
            except ValueError as exc:
                raise ConfigError(f"llmreel_replay_pace: {exc}") from exc
            if self.pacer is not None:
                self.pacer.close()
            self.pacer = Pacer(factor) if factor is not None else None
        if "llmreel_run_id" in updated:
            self.accountant.run = str(v["llmreel_run_id"])[:64]
        if "llmreel_ignore_fields" in updated:
            self.key_config = KeyConfig(ignore_fields=tuple(v["llmreel_ignore_fields"]))
        if "llmreel_prices" in updated:
            try:
                prices = v["llmreel_prices"]
                overrides = load_overrides(prices) if prices else None
            except (OSError, ValueError) as exc:
                raise ConfigError(f"llmreel_prices: {exc}") from exc
            self.accountant.pricer = Pricer(overrides)

    def _configure_otlp(self, option: str, content: bool) -> None:
        try:
            endpoint = traces_endpoint(option)
        except ValueError as exc:
            raise ConfigError(f"llmreel_otlp_endpoint: {exc}") from exc
        self._swap_sink("otlp", None)
        if endpoint is not None:
            from llmreel.metering.otel import OtlpSink  # the SDK loads only when it is used

            self._swap_sink("otlp", OtlpSink(endpoint, self.metrics, content=content))
            log.info("exporting spans to %s", display(endpoint))

    def _swap_sink(self, attr: str, new: ExchangeLog | JsonlSink | OtlpSink | None) -> None:
        old: ExchangeLog | JsonlSink | OtlpSink | None = getattr(self, attr)
        if old is not None:
            self.sinks.remove(old.append)
            old.close()
        setattr(self, attr, new)
        if new is not None:
            self.sinks.append(new.append)

    def _open_store(self, path: str) -> None:
        self._close_store()
        try:
            self.store = self._store_factory(path)
        except StoreError as exc:
            raise ConfigError(str(exc)) from exc
        self._used = UsedTimes(self.store, wall=self._wall)
        # Lock files cost a miss a few syscalls (15% of its CPU): only processes that share
        # the store with siblings (--workers) take them.
        self._file_flights = FileFlights(lease_dir(path)) if self.flight_locks else None

    def _close_store(self) -> None:
        if self.store is None:
            return
        self._swap_sink("exchange_log", None)
        if self._used is not None:
            self._used.flush()
        self.store.close()
        self.store = None
        self._used = None
        self._file_flights = None

    def _store_stats(self) -> Any:
        store = self.store
        if store is None:
            return None
        try:
            return store.stats()
        except StoreError:
            return None

    def flush_used(self) -> None:
        if self._used is not None:
            self._used.flush()

    def _remember(self, exchange: Any) -> None:
        if self.control.port:
            self.recent.add(exchange)

    def close(self) -> None:
        self.control.close()
        if self.shared is not None:
            self.extra_flights.remove(self.shared)
            self.shared.close_soon()
            self.shared = None
        if self.pacer is not None:
            self.pacer.close()
        self._swap_sink("jsonl", None)
        self._swap_sink("otlp", None)  # flushes, waiting a few seconds at most
        self._close_store()

    def new_run(self) -> None:
        """Start a new run: sequence mode counts occurrences from the first again."""
        self.occurrences.clear()

    @property
    def offline(self) -> bool:
        return self.mode == "offline"

    def paced(self, rec: Recording) -> bool:
        """Whether this hit is replayed at its recorded pace (through the pacer)."""
        return self.pacer is not None and rec.is_stream

    def allows_connection(self, host: str, port: int) -> bool:
        """Whether an upstream connection may be opened: never in offline mode, except to
        llmreel's own servers on loopback (the pacer; the control API, which clients reach
        through the proxy when HTTP_PROXY is set)."""
        if not self.offline:
            return True
        own = host == "127.0.0.1" and port in (self.control.port, self.pacer and self.pacer.port)
        return bool(own and port)

    def refusal(self, address: str) -> str:
        """Why an upstream connection is refused in offline mode."""
        return (
            f"llmreel is in offline mode and does not connect to {address}. "
            "Only recorded LLM calls are served; run with --mode auto to reach the network."
        )

    # --- request ------------------------------------------------------------------------------

    def begin(self, head: RequestHead) -> FlowState | ErrorReply | None:
        """Classify and key an LLM request: its state, an error reply for a bad llmreel header,
        or None for traffic llmreel leaves alone."""
        hostport = f"[{head.host}]:{head.port}" if ":" in head.host else f"{head.host}:{head.port}"
        endpoint = classify(head.method, hostport, head.path, self.hosts)
        if endpoint is None:
            return None
        control = head.controls.get(CONTROL_HEADER)
        token = head.controls.get(CONTEXT_HEADER) or head.context
        context = self.contexts.get(token)
        if context is None:
            return error_reply(
                endpoint.api, BAD_REQUEST_STATUS,
                f"llmreel: unknown control context {token!r}; create one with POST /contexts on "
                "the control API (docs/control.md).", "llmreel_bad_context",
            )  # fmt: skip
        namespace = (
            head.controls.get(NAMESPACE_HEADER) or context.namespace or self.default_namespace
        )
        if control is not None and control.strip().lower() not in CONTROLS:
            return error_reply(
                endpoint.api, BAD_REQUEST_STATUS,
                f"llmreel: unknown {CONTROL_HEADER} value {control!r}; use one of "
                f"{', '.join(CONTROLS)}.", "llmreel_bad_header",
            )  # fmt: skip
        if self._scope_salt is not None:
            credential = credential_of(head.headers, head.query)
            if credential:
                namespace = f"{namespace}@{credential_scope(credential, self._scope_salt)}"
        try:
            validate_namespace(namespace)
        except ValueError as exc:
            return error_reply(
                endpoint.api, BAD_REQUEST_STATUS,
                f"llmreel: bad {NAMESPACE_HEADER} header: {exc}.", "llmreel_bad_header",
            )  # fmt: skip
        body = head.read_body()
        # A body keyed before (a replay) is not parsed and hashed again (see engine/keying.py).
        keyed = self._keyer.key(endpoint, head, body)
        key = keyed.key
        seq = self.occurrences.next((namespace, key)) if self.sequence else 0
        return FlowState(
            endpoint=endpoint,
            plan=plan(self.mode, control.strip().lower() if control else None),
            namespace=namespace,
            key=key,
            canonical=keyed.canonical,
            model=keyed.model,
            stream=keyed.stream,
            started=self._clock(),
            started_unix=head.started_unix,
            method=head.method,
            url=masked_url(head.scheme, head.host, head.port, head.path, head.query),
            client=head.client,
            listener=head.listener,
            request_headers=self._mask_headers(head.headers),
            request_body=body,
            seq=seq,
            session=(head.controls.get(SESSION_HEADER) or context.session or "")[:200],
            context=token,
        )

    async def decide(self, state: FlowState) -> Recording | ErrorReply | None:
        """A recording to replay, an error to answer with, or None: forward upstream."""
        if state.plan.lookup:
            while True:
                rec = await self._lookup(state)
                if rec is not None:
                    return self._hit(state, rec)
                if not state.plan.forward:
                    break
                if state.plan.record:
                    state.lease = self.flights.lead(state.flight)
                    if state.lease is not None:
                        rec = await self._lead_remote(state)
                        if rec is None:
                            break
                        state.release(True)  # local followers look again and find it
                        return self._hit(state, rec)
                # Single flight: an identical request is already on its way upstream. Wait for
                # it, then serve its recording instead of paying for the same call twice. If it
                # recorded nothing (an error), look again: one waiter becomes the next leader.
                if await self.flights.follow(state.flight) is None and not state.plan.record:
                    break
        if not state.plan.forward:
            return await self._refuse(state)
        if self.budget_usd is not None and self.total_spent() >= self.budget_usd:
            state.release(False)
            return self._over_budget(state)
        if state.plan.record and state.lease is None and not state.plan.lookup:
            state.lease = self.flights.lead(state.flight)
        try:
            if self.explain_misses and state.plan.lookup:
                state.explanation = await self._explain(state)
        except BaseException:
            state.release(False)
            raise
        state.outcome = state.plan.outcome
        state.forwarded_at = self._clock()
        return None

    @property
    def remote_flights(self) -> list[RemoteFlights]:
        """The single-flight tiers beyond this process, in the order they are asked: the
        machine's lock files, then any shared tier in `extra_flights` (Redis)."""
        tiers: list[RemoteFlights] = [self._file_flights] if self._file_flights else []
        return tiers + self.extra_flights

    async def _lead_remote(self, state: FlowState) -> Recording | None:
        """Lead this flight in every tier beyond the process, or wait for whoever leads it.

        A follower polls the lookup (which sees other processes' commits) until the recording
        appears, and stops waiting when the lease is freed (its leader recorded nothing or
        died: it then tries to lead) or after the single flight's deadline (it then goes
        upstream without the lease). Returns the recording the other leader made, if any.
        """
        tiers = self.remote_flights
        if not tiers:
            return None
        key = flight_key(*state.flight)
        deadline = self._clock() + self.flights.wait_s
        for tier in tiers:
            while (lease := await tier.lead(key)) is None:
                while self._clock() < deadline and await tier.held(key):
                    await asyncio.sleep(REMOTE_POLL_S)
                    if (rec := await self._lookup(state)) is not None:
                        state.release_remote()
                        return rec
                if (rec := await self._lookup(state)) is not None:
                    state.release_remote()
                    return rec
                if self._clock() >= deadline:
                    break
            if lease is not None:
                state.remote.append(lease)
        return None

    def _over_budget(self, state: FlowState) -> ErrorReply:
        assert self.budget_usd is not None
        state.outcome = "budget_refused"
        spent = self.total_spent()
        self.report.budget_refusals += 1
        self.metrics.budget_refusals.inc()
        log.warning(
            "budget spent ($%.4f of $%.4f): refused %s %s", spent, self.budget_usd, state.method,
            state.url,
        )  # fmt: skip
        return budget_spent(state.endpoint.api, spent, self.budget_usd)

    async def _lookup(self, state: FlowState) -> Recording | None:
        store = self.store
        if store is None:
            return None
        local: dict[int, Recording | None] = {}

        def get(seq: int) -> Recording | None:
            if seq not in local:
                local[seq] = store.get(state.namespace, state.key, seq, request=False)
            return local[seq]

        def find() -> Found[Recording]:
            return lookup(get, state.seq, replay_only=not state.plan.forward,
                          max_age_s=self.max_age_s, now=self._wall())  # fmt: skip

        try:
            # An export directory reads files: keep that off the event loop.
            found = await asyncio.to_thread(find) if store.blocking_reads else find()
        except StoreError as exc:
            log.error("%s", exc)
            return None
        if self.shared is not None:  # LMDB first, Redis second (engine/shared.py)
            found = await lookup_shared(self.shared, store, state, found, local,
                                        max_age_s=self.max_age_s, now=self._wall())  # fmt: skip
        if found.stale_age_s is not None and self._stale_warned.first_time(state.key):
            log.warning(
                "serving recording %s recorded %.1f days ago, older than --max-age; record it "
                "again with --mode auto", state.key, found.stale_age_s / 86400,
            )  # fmt: skip
        return found.recording

    def _hit(self, state: FlowState, rec: Recording) -> Recording:
        state.outcome = "hit"
        state.replay = rec
        self.report.hit(rec.namespace, rec.key, rec.seq)
        if self._used is not None:
            self._used.mark(rec.namespace, rec.key, rec.seq)
        return rec

    async def _refuse(self, state: FlowState) -> ErrorReply:
        state.outcome = "offline_miss"
        state.explanation = state.plan.refusal or await self._explain(state)
        log.warning(
            "offline miss: %s %s key=%s namespace=%s%s", state.method, state.url, state.key,
            state.namespace, f"\n  {state.explanation}" if state.explanation else "",
        )  # fmt: skip
        return offline_miss(state.endpoint.api, state.method, state.url, state.key,
                            state.namespace, state.explanation)  # fmt: skip

    async def _explain(self, state: FlowState) -> str:
        """How the closest recording for this endpoint and namespace differs (read off-loop)."""
        store = self.store
        if store is None:
            return ""

        def closest() -> str:
            try:
                # Only the recordings of the same endpoint that resemble it most are decoded.
                found = explain(state.canonical, store.candidates(state.namespace, state.canonical))
            except StoreError as exc:
                return f"(could not search the store: {exc})"
            return (
                found or f"Nothing was recorded for this endpoint in namespace {state.namespace!r}."
            )

        return await asyncio.to_thread(closest)

    # --- response -----------------------------------------------------------------------------

    def tee(
        self, state: FlowState, content_type: str, content_length: int | None
    ) -> StreamTee | None:
        """The tee for a forwarded response that must stream: an event stream, a request that
        asked for one, or a body too large to buffer for a recording. None: let it buffer."""
        if state.replay is not None or state.forwarded_at is None:
            return None
        too_large = content_length is not None and content_length > self.max_record_bytes
        if not (is_event_stream(content_type) or state.stream or too_large):
            return None
        state.tee = StreamTee(state.forwarded_at, self._clock, limit=self.max_record_bytes)
        return state.tee

    def finish(self, state: FlowState, resp: ResponseInfo) -> None:
        """The response is complete: record it if it should be, and account for it."""
        if state.finished:
            return
        state.finished = True
        handed_off = False
        try:
            handed_off = self._finish(state, resp)
        finally:
            if not handed_off:
                state.release(False)

    def _finish(self, state: FlowState, resp: ResponseInfo) -> bool:
        now = self._clock()
        headers = self._mask_headers(resp.headers)
        if state.replay is not None:
            rec = state.replay
            usage = Usage(**rec.usage) if rec.usage else None
            self.accountant.account(state, Outcome(
                now, rec.body, rec.status, headers, usage=usage, response_model=rec.model,
            ))  # fmt: skip
            return False
        if state.forwarded_at is None:  # answered by llmreel itself (offline miss, bad header)
            self.accountant.account(state, Outcome(now, resp.body, resp.status, headers))
            return False
        content_type = next((v for k, v in resp.headers if k.lower() == "content-type"), "")
        summary = summarize(state.endpoint, resp.body, content_type)
        recorded = False
        if state.plan.record and 200 <= resp.status < 300:
            reason = self._unrecordable(state, summary)
            if reason is None:
                recorded = self._record(state, resp, summary, now)
            else:
                log.warning("not recording %s %s: %s", state.method, state.url, reason)
        self.accountant.account(state, Outcome(
            now, resp.body, resp.status, headers, usage=summary.usage,
            response_model=summary.model, summary=summary, recorded=recorded,
        ))  # fmt: skip
        return recorded

    def _unrecordable(self, state: FlowState, summary: ResponseSummary) -> str | None:
        tee = state.tee
        if tee is not None and tee.overflow:
            self.metrics.recording_skipped("too_large")
            return f"the response is larger than --max-record-bytes ({self.max_record_bytes})"
        if tee is not None and tee.failed:
            self.metrics.recording_skipped("copy_failed")
            return f"llmreel's copy of the stream is incomplete ({tee.failed})"
        if not summary.complete or summary.error is not None:
            return summary.error or "the response did not complete"
        return None

    def _record(
        self, state: FlowState, resp: ResponseInfo, summary: ResponseSummary, now: float
    ) -> bool:
        """Hand the recording to the store's writer; the single flight ends when it is saved."""
        assert self.store is not None and state.forwarded_at is not None
        tee = state.tee
        chunks = tee.chunks if tee is not None else []
        if chunks and tee is not None and tee.size != len(resp.body):
            # The stream arrived content-encoded and was decoded: the received chunk sizes no
            # longer describe the body, so keep one chunk, at the time the last one arrived.
            chunks = [(chunks[-1][0], len(resp.body))]
        rec = Recording(
            key=state.key,
            namespace=state.namespace,
            request=state.canonical,
            status=resp.status,
            headers=recordable_headers(resp.headers),
            body=resp.body,
            chunks=chunks,
            recorded_at=self._wall(),
            provider=state.endpoint.provider,
            model=summary.model or state.model,
            usage=summary.usage.as_dict() if summary.usage else None,
            duration_s=round(now - state.forwarded_at, 6),
            ttfc_s=ttfc(state),
            seq=state.seq,
        )
        future = self.store.submit(rec)
        handoff = self._handoff_for(asyncio.get_running_loop())

        def committed(done: concurrent.futures.Future[None]) -> None:
            # On the loop, batched with the other recordings of the commit; if the loop has
            # closed (shutdown), nobody is waiting any more.
            handoff.call(partial(self._after_write, state, done, rec), partial(state.release, False))

        future.add_done_callback(committed)
        return True

    def _handoff_for(self, loop: asyncio.AbstractEventLoop) -> LoopHandoff:
        handoff = self._handoff
        if handoff is None or handoff.loop is not loop:
            handoff = self._handoff = LoopHandoff(loop)
        return handoff

    def _after_write(
        self, state: FlowState, done: concurrent.futures.Future[None], rec: Recording
    ) -> None:
        error = done.exception()
        try:
            if error is not None:
                # A full disk or queue fails every write: one line a minute, all of them counted.
                self._write_errors.error("recording not saved: %s", error)
                self.metrics.store_write_failed(getattr(error, "reason", "io_error"))
                self.report.write_failures += 1
            else:
                self.report.written += 1
                if self.shared is not None:  # before the release: the lease outlives the write
                    self.shared.publish(rec, state.flight)
        finally:
            state.release(error is None)

    def fail(self, state: FlowState, message: str) -> None:
        """The call ended without a complete response (a cut stream, a refused connection...)."""
        if state.finished:
            return
        state.finished = True
        try:
            tee = state.tee
            body = tee.body() if tee is not None else b""
            summary = summarize(state.endpoint, body, "text/event-stream") if body else None
            log.warning("%s %s failed: %s (not recorded)", state.method, state.url, message)
            streamed = tee is not None and bool(tee.size)
            self.accountant.account(state, Outcome(
                self._clock(), body, None, [], summary=summary,
                usage=summary.usage if summary else None, error=message,
                error_type=failure_type(message, streamed=streamed),
            ))  # fmt: skip
        finally:
            state.release(False)


def _duration(values: Mapping[str, Any], name: str) -> float:
    try:
        return parse_duration(values[name])
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from exc
