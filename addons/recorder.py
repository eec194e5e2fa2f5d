"""llmreel's mitmproxy addon: record, replay, log and meter LLM API calls.

Load it into mitmproxy directly:

    mitmdump -s addons/recorder.py --set llmreel_store=.llmreel --set llmreel_mode=auto

or let `llmreel serve` run the same class. The addon is glue: keys, providers, usage, pricing,
storage and metrics live in the `proxy` package.

Failure policy: llmreel must never be the reason an agent's call fails. A recording that cannot
be written is logged and counted, and the response still reaches the client. The one exception
is offline mode, where a miss is answered with a clear error instead of reaching the network.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

from mitmproxy import ctx, exceptions, http
from mitmproxy.connection import Server
from mitmproxy.net import encoding
from mitmproxy.proxy import server_hooks
from prometheus_client import CollectorRegistry, start_http_server

from llmreel.core.diff import explain
from llmreel.core.errors import BAD_REQUEST_STATUS, ErrorReply, error_reply, offline_miss
from llmreel.core.exchange import Exchange, FlowState
from llmreel.core.ids import new_id
from llmreel.log.exchangelog import ExchangeLog, JsonlSink
from llmreel.core.keys import KeyConfig, canonical_request, request_digest
from llmreel.metering.metrics import Metrics
from llmreel.core.modes import CONTROLS, MODES, plan
from llmreel.metering.pricing import Pricer, load_overrides
from llmreel.providers.wire_apis import (
    DEFAULT_HOSTS,
    HostMap,
    ResponseSummary,
    Usage,
    classify,
    request_model,
    summarize,
    wants_stream,
)
from llmreel.storage.records import Recording
from llmreel.core.redact import credential_of, credential_scope, mask_headers, mask_query
from llmreel.metering.report import Miss, RunReport
from llmreel.storage.lmdbstore import LmdbStore, Store, StoreError, entry_key, validate_namespace
from llmreel.storage.stores import open_store
from llmreel.core.timeparse import parse_duration
from llmreel.core.wire import (
    CONTROL_HEADER,
    KEY_HEADER,
    NAMESPACE_HEADER,
    StreamTee,
    is_event_stream,
    is_loopback,
    recordable_headers,
)

log = logging.getLogger("llmreel")

META = "llmreel"
SINGLE_FLIGHT_WAIT_S = 600.0
USED_FLUSH_S = 5.0


class Recorder:
    """Records LLM calls into a store, replays them, and accounts for every exchange."""

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        store_factory: Callable[[str], Store] = open_store,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._store_factory = store_factory
        self._clock = clock
        self.store: Store | None = None
        self.metrics = Metrics(self.registry, store_stats=self._store_stats)
        self.pricer = Pricer()
        self.key_config = KeyConfig()
        self.hosts: HostMap = DEFAULT_HOSTS
        self.sinks: list[Callable[[Exchange], None]] = []
        self._inflight: dict[tuple[str, str, int], asyncio.Future[None]] = {}
        self._metrics_server: Any = None
        self._unpriced_seen: set[tuple[str, str]] = set()
        self._own_ports: frozenset[int] = frozenset()
        self.is_running = False
        self.metrics_error: str | None = None
        # Option values read in configure(): hooks must not depend on the global ctx, which
        # belongs to whichever mitmproxy master was created last in this process.
        self.mode = "auto"
        self.default_namespace = "default"
        self.sequence = False
        self.explain_misses = False
        self.max_age_s: float | None = None
        self.report = RunReport()
        self._occurrences: dict[tuple[str, str], int] = {}
        self._used_pending: dict[bytes, bytes] = {}
        self._used_flushed_at = 0.0
        self._stale_warned: set[str] = set()
        self._scope_salt: bytes | None = None
        self.exchange_log: ExchangeLog | None = None
        self.jsonl: JsonlSink | None = None

    # --- configuration ------------------------------------------------------------------------

    def load(self, loader: Any) -> None:
        loader.add_option(
            "llmreel_mode", str, "auto",
            "auto: serve recordings, record what is new. record: always call upstream and "
            "overwrite. offline: serve recordings only; a miss never reaches the network. "
            "passthrough: never read or write the cache; only log and meter.",
            choices=MODES,
        )  # fmt: skip
        loader.add_option(
            "llmreel_store", str, ".llmreel",
            "The recordings: an LMDB store directory, or an export directory (docs/recordings.md).",
        )  # fmt: skip
        loader.add_option(
            "llmreel_namespace", str, "default",
            "Cache namespace for requests without an llmreel-namespace header.",
        )  # fmt: skip
        loader.add_option(
            "llmreel_metrics_port", int, 0,
            "Port for Prometheus /metrics (0: off). `llmreel serve` defaults to 9464.",
        )  # fmt: skip
        loader.add_option("llmreel_metrics_host", str, "127.0.0.1", "Address /metrics listens on.")
        loader.add_option(
            "llmreel_hosts", Sequence[str], [],
            "Extra HOST=PROVIDER mappings (e.g. llm.internal=openai, *.example.com=anthropic).",
        )  # fmt: skip
        loader.add_option(
            "llmreel_ignore_fields", Sequence[str], [],
            "JSON body fields left out of the cache key, as dotted paths (user, metadata.run_id).",
        )  # fmt: skip
        loader.add_option(
            "llmreel_prices", Optional[str], None,  # noqa: UP045 - mitmproxy option typespec
            "TOML or JSON file of USD-per-million-token prices for models genai-prices lacks.",
        )  # fmt: skip
        loader.add_option(
            "llmreel_sequence", bool, False,
            "Record every occurrence of an identical request and replay them in order (per "
            "namespace); after the last recording, the last one is served again.",
        )  # fmt: skip
        loader.add_option(
            "llmreel_scope_by_credential", bool, False,
            "Isolate the cache by a salted hash of each request's API key (a proxy shared by "
            "several teams); requests without a key share the unscoped cache.",
        )  # fmt: skip
        loader.add_option(
            "llmreel_log_retention", str, "30d",
            "How long the exchange log keeps entries (30s, 10m, 2h, 7d; 0: forever).",
        )  # fmt: skip
        loader.add_option(
            "llmreel_log_file", Optional[str], None,  # noqa: UP045 - mitmproxy option typespec
            "Also write one JSON object per exchange to this file (- for standard output).",
        )  # fmt: skip
        loader.add_option(
            "llmreel_log_bodies", bool, False, "Include request and response bodies in llmreel_log_file."
        )
        loader.add_option(
            "llmreel_explain_misses", bool, False,
            "Also in auto mode, find the closest recording for each miss and log what differs "
            "(offline misses always are). Costs a scan of the namespace per miss.",
        )  # fmt: skip
        loader.add_option(
            "llmreel_max_age", str, "",
            "Recordings older than this (e.g. 30d, 12h) are misses in auto mode and recorded "
            "again; offline mode serves them with a warning. Empty: no limit.",
        )  # fmt: skip

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        if "llmreel_store" in updated:
            self._open_store(opts.llmreel_store)
        if updated & {"llmreel_store", "llmreel_log_retention"}:
            try:
                retention = parse_duration(opts.llmreel_log_retention)
            except ValueError as exc:
                raise exceptions.OptionsError(f"llmreel_log_retention: {exc}") from exc
            # The log lives beside LMDB recordings; an export directory (committed to git) has
            # no log, by design.
            self._swap_sink("exchange_log", ExchangeLog(self.store, retention_s=retention or None)
                            if isinstance(self.store, LmdbStore) else None)  # fmt: skip
        if updated & {"llmreel_log_file", "llmreel_log_bodies"}:
            try:
                jsonl = (
                    JsonlSink(opts.llmreel_log_file, bodies=opts.llmreel_log_bodies)
                    if opts.llmreel_log_file
                    else None
                )
            except OSError as exc:
                raise exceptions.OptionsError(f"llmreel_log_file: {exc}") from exc
            self._swap_sink("jsonl", jsonl)
        if "llmreel_mode" in updated:
            if opts.llmreel_mode not in MODES:
                raise exceptions.OptionsError(
                    f"llmreel_mode: {opts.llmreel_mode!r} is not one of {', '.join(MODES)}"
                )
            self.mode = opts.llmreel_mode
        if "llmreel_namespace" in updated:
            try:
                self.default_namespace = validate_namespace(opts.llmreel_namespace)
            except ValueError as exc:
                raise exceptions.OptionsError(f"llmreel_namespace: {exc}") from exc
        if "llmreel_hosts" in updated:
            extra: dict[str, str] = {}
            for item in opts.llmreel_hosts:
                host, sep, provider = item.partition("=")
                if not sep or not host.strip() or not provider.strip():
                    raise exceptions.OptionsError(
                        f"llmreel_hosts: {item!r} is not HOST=PROVIDER, e.g. llm.internal=openai"
                    )
                extra[host.strip()] = provider.strip()
            self.hosts = DEFAULT_HOSTS.merged(extra)
        if "llmreel_scope_by_credential" in updated or "llmreel_store" in updated:
            self._scope_salt = None
            if opts.llmreel_scope_by_credential:
                if not isinstance(self.store, LmdbStore):
                    raise exceptions.OptionsError(
                        "llmreel_scope_by_credential needs an LMDB store, which keeps the salt"
                    )
                self._scope_salt = self.store.secret_salt()
        if "llmreel_sequence" in updated:
            self.sequence = opts.llmreel_sequence
        if "llmreel_explain_misses" in updated:
            self.explain_misses = opts.llmreel_explain_misses
        if "llmreel_max_age" in updated:
            try:
                self.max_age_s = parse_duration(opts.llmreel_max_age) if opts.llmreel_max_age else None
            except ValueError as exc:
                raise exceptions.OptionsError(f"llmreel_max_age: {exc}") from exc
        if "llmreel_ignore_fields" in updated:
            self.key_config = KeyConfig(ignore_fields=tuple(opts.llmreel_ignore_fields))
        if "llmreel_prices" in updated:
            try:
                overrides = load_overrides(opts.llmreel_prices) if opts.llmreel_prices else None
            except (OSError, ValueError) as exc:
                raise exceptions.OptionsError(f"llmreel_prices: {exc}") from exc
            self.pricer = Pricer(overrides)
        # Hits must be served without an upstream connection, and offline mode must never open
        # one: with the default "eager" strategy mitmproxy connects before our hook runs.
        if "connection_strategy" in opts and opts.connection_strategy != "lazy":
            opts.connection_strategy = "lazy"

    def _swap_sink(self, attr: str, new: ExchangeLog | JsonlSink | None) -> None:
        old: ExchangeLog | JsonlSink | None = getattr(self, attr)
        if old is not None:
            self.sinks.remove(old.append)
            old.close()
        setattr(self, attr, new)
        if new is not None:
            self.sinks.append(new.append)

    def _open_store(self, path: str) -> None:
        if self.store is not None:
            self._swap_sink("exchange_log", None)
            self._flush_used()
            self.store.close()
            self.store = None
        try:
            self.store = self._store_factory(path)
        except StoreError as exc:
            raise exceptions.OptionsError(str(exc)) from exc

    def _store_stats(self) -> Any:
        store = self.store
        if store is None:
            return None
        try:
            return store.stats()
        except StoreError:
            return None

    def running(self) -> None:
        proxyserver = ctx.master.addons.get("proxyserver")
        if proxyserver is not None:
            # Requests aimed at our own listeners (a reverse listener reached through
            # HTTPS_PROXY) are handled where they land, not twice.
            self._own_ports = frozenset(a[1] for a in proxyserver.listen_addrs())
        port = ctx.options.llmreel_metrics_port
        if port and self._metrics_server is None:
            host = ctx.options.llmreel_metrics_host
            try:
                self._metrics_server, _ = start_http_server(port, addr=host, registry=self.registry)
            except OSError as exc:
                self.metrics_error = f"cannot serve metrics on {host}:{port}: {exc}"
                log.error("%s; pick another --metrics-port (0 turns it off)", self.metrics_error)
            else:
                log.info("metrics on http://%s:%d/metrics", host, self.metrics_port)
        self.is_running = True

    @property
    def metrics_port(self) -> int | None:
        if self._metrics_server is None:
            return None
        return int(self._metrics_server.server_port)

    def done(self) -> None:
        self.is_running = False
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        self._swap_sink("jsonl", None)
        self._swap_sink("exchange_log", None)
        if self.store is not None:
            self._flush_used()
            self.store.close()
            self.store = None

    # --- the offline guarantee ----------------------------------------------------------------

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        if self.mode == "offline":
            data.server.error = (
                f"llmreel is in offline mode and does not connect to {_address(data.server)}. "
                "Only recorded LLM calls are served; run with --mode auto to reach the network."
            )

    # --- request ------------------------------------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.websocket is not None:
            return
        state = self._begin(flow)
        if state is None:
            return
        if await self._replay(flow, state):
            return
        if not state.plan.forward:
            await self._refuse(flow, state)
            return
        if self.explain_misses and state.plan.lookup:
            state.explanation = await self._explain(state)
        state.outcome = state.plan.outcome
        flight = (state.namespace, state.key, state.seq)
        if state.plan.record and flight not in self._inflight:
            self._inflight[flight] = asyncio.get_running_loop().create_future()
            state.leader = True
        # Plain bodies let the tee record SSE as the client sees it, chunk by chunk.
        flow.request.headers["accept-encoding"] = "identity"
        state.forwarded_at = self._clock()

    def _begin(self, flow: http.HTTPFlow) -> FlowState | None:
        """Classify and key an LLM request; None for traffic llmreel leaves alone."""
        req = flow.request
        if req.port in self._own_ports and is_loopback(req.host):
            return None
        path, _, _ = req.path.partition("?")
        hostport = f"[{req.host}]:{req.port}" if ":" in req.host else f"{req.host}:{req.port}"
        endpoint = classify(req.method, hostport, path, self.hosts)
        if endpoint is None:
            return None
        control = req.headers.pop(CONTROL_HEADER, None)
        namespace = req.headers.pop(NAMESPACE_HEADER, None) or self.default_namespace
        if control is not None and control.strip().lower() not in CONTROLS:
            self._reply(flow, error_reply(
                endpoint.api, BAD_REQUEST_STATUS,
                f"llmreel: unknown {CONTROL_HEADER} value {control!r}; use one of "
                f"{', '.join(CONTROLS)}.", "llmreel_bad_header",
            ))  # fmt: skip
            return None
        if self._scope_salt is not None:
            credential = credential_of(req.headers.items(multi=True), req.query.items(multi=True))
            if credential:
                namespace = f"{namespace}@{credential_scope(credential, self._scope_salt)}"
        try:
            validate_namespace(namespace)
        except ValueError as exc:
            self._reply(flow, error_reply(
                endpoint.api, BAD_REQUEST_STATUS,
                f"llmreel: bad {NAMESPACE_HEADER} header: {exc}.", "llmreel_bad_header",
            ))  # fmt: skip
            return None
        body = req.get_content(strict=False) or b""
        canonical = canonical_request(
            req.method, req.scheme, req.host, req.port, path,
            req.query.items(multi=True), req.headers.items(multi=True), body, self.key_config,
        )  # fmt: skip
        key = request_digest(canonical)
        seq = 0
        if self.sequence:
            seq = self._occurrences.get((namespace, key), 0)
            self._occurrences[(namespace, key)] = seq + 1
        state = FlowState(
            endpoint=endpoint,
            plan=plan(self.mode, control.strip().lower() if control else None),
            namespace=namespace,
            key=key,
            canonical=canonical,
            model=request_model(endpoint, path, canonical["body"]),
            started=self._clock(),
            request_headers=mask_headers(req.headers.items(multi=True)),
            request_body=body,
            seq=seq,
        )
        flow.metadata[META] = state
        return state

    async def _replay(self, flow: http.HTTPFlow, state: FlowState) -> bool:
        """Serve a recording if the plan allows one; wait for an identical request in flight."""
        if not state.plan.lookup:
            return False
        while True:
            if self._serve_recording(flow, state):
                return True
            leader = self._inflight.get((state.namespace, state.key, state.seq))
            if leader is None or not state.plan.forward:
                return False
            # Single flight: an identical request is already on its way upstream. Wait for it,
            # then serve its recording instead of paying for the same call twice. If it was not
            # recorded (an error), the next waiter goes upstream itself.
            try:
                await asyncio.wait_for(asyncio.shield(leader), SINGLE_FLIGHT_WAIT_S)
            except TimeoutError:
                return False

    async def _refuse(self, flow: http.HTTPFlow, state: FlowState) -> None:
        state.outcome = "offline_miss"
        url = _masked_url(flow)
        state.explanation = state.plan.refusal or await self._explain(state)
        self._reply(flow, offline_miss(
            state.endpoint.api, flow.request.method, url, state.key, state.namespace,
            state.explanation,
        ))  # fmt: skip
        log.warning(
            "offline miss: %s %s key=%s namespace=%s%s", flow.request.method, url, state.key,
            state.namespace, f"\n  {state.explanation}" if state.explanation else "",
        )  # fmt: skip

    async def _explain(self, state: FlowState) -> str:
        """How the closest recording for this endpoint and namespace differs (read off-loop)."""
        store = self.store
        if store is None:
            return ""

        def closest() -> str:
            try:
                found = explain(state.canonical, (r.request for r in store.iter(state.namespace)))
            except StoreError as exc:
                return f"(could not search the store: {exc})"
            return found or f"Nothing was recorded for this endpoint in namespace {state.namespace!r}."

        return await asyncio.to_thread(closest)

    def _lookup(self, state: FlowState) -> Recording | None:
        assert self.store is not None
        rec = self.store.get(state.namespace, state.key, state.seq, request=False)
        if rec is None and state.seq and not state.plan.forward:
            # Sequence mode, replay only: after the last recording, serve the last one.
            for earlier in range(state.seq - 1, -1, -1):
                rec = self.store.get(state.namespace, state.key, earlier, request=False)
                if rec is not None:
                    break
        if rec is None or self.max_age_s is None:
            return rec
        age = time.time() - rec.recorded_at
        if age <= self.max_age_s:
            return rec
        if state.plan.forward:
            return None  # too old: a miss, recorded again
        if state.key not in self._stale_warned:
            self._stale_warned.add(state.key)
            log.warning(
                "serving recording %s recorded %.1f days ago, older than --max-age; record it "
                "again with --mode auto", state.key, age / 86400,
            )  # fmt: skip
        return rec

    def _serve_recording(self, flow: http.HTTPFlow, state: FlowState) -> bool:
        try:
            rec = self._lookup(state)
        except StoreError as exc:
            log.error("%s", exc)
            return False
        if rec is None:
            return False
        state.outcome = "hit"
        state.replay = rec
        flow.response = http.Response.make(
            rec.status,
            rec.body,
            [(k.encode(), v.encode()) for k, v in rec.headers]
            + [(b"llmreel-cache", b"hit"), (KEY_HEADER.encode(), state.key.encode())],
        )
        self._mark_used(rec)
        return True

    def _mark_used(self, rec: Recording) -> None:
        """Remember when each recording was last served (for `cache prune --unused-since`)."""
        now = time.time()
        self.report.hit(rec.namespace, rec.key, rec.seq)
        self._used_pending[entry_key(rec.namespace, rec.key, rec.seq)] = str(int(now)).encode()
        if now - self._used_flushed_at > USED_FLUSH_S:
            self._flush_used()

    def _flush_used(self) -> None:
        self._used_flushed_at = time.time()
        if not self._used_pending or not isinstance(self.store, LmdbStore):
            self._used_pending.clear()
            return
        writes: list[tuple[bytes, bytes, bytes | None]] = [
            (b"used", k, v) for k, v in self._used_pending.items()
        ]
        self._used_pending = {}
        self.store.submit_raw(writes)

    def _reply(self, flow: http.HTTPFlow, reply: ErrorReply) -> None:
        headers = [(k.encode(), v.encode()) for k, v in reply.headers]
        state: FlowState | None = flow.metadata.get(META)
        if state is not None:
            headers += [
                (b"llmreel-cache", state.outcome.encode()),
                (KEY_HEADER.encode(), state.key.encode()),
            ]
        flow.response = http.Response.make(reply.status, reply.body, headers)

    # --- response -----------------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state: FlowState | None = flow.metadata.get(META)
        if state is None or state.replay is not None or state.forwarded_at is None:
            return
        resp = flow.response
        assert resp is not None
        resp.headers["llmreel-cache"] = state.outcome
        resp.headers[KEY_HEADER] = state.key
        canonical = state.canonical
        if is_event_stream(resp.headers.get("content-type", "")) or wants_stream(
            state.endpoint, canonical["path"], "", canonical["body"]
        ):
            state.tee = StreamTee(state.forwarded_at, self._clock)
            resp.stream = state.tee

    async def response(self, flow: http.HTTPFlow) -> None:
        state: FlowState | None = flow.metadata.get(META)
        if state is None:
            return
        resp = flow.response
        assert resp is not None
        now = self._clock()
        if state.replay is not None:
            rec = state.replay
            usage = Usage(**rec.usage) if rec.usage else None
            self._finish(flow, state, now, usage=usage, response_model=rec.model,
                         body=rec.body, status=rec.status)  # fmt: skip
            return
        if state.forwarded_at is None:  # answered by llmreel itself (offline miss, bad header)
            self._finish(flow, state, now, body=resp.content or b"", status=resp.status_code)
            return
        body = self._response_body(resp, state)
        summary = summarize(state.endpoint, body, resp.headers.get("content-type", ""))
        recorded = False
        if state.plan.record and 200 <= resp.status_code < 300:
            if summary.complete and summary.error is None:
                recorded = self._record(flow, state, body, summary, now)
            else:
                log.warning(
                    "not recording %s %s: %s", flow.request.method, _masked_url(flow),
                    summary.error or "the response did not complete",
                )  # fmt: skip
        if not recorded:
            self._release(state)
        self._finish(flow, state, now, usage=summary.usage, response_model=summary.model,
                     body=body, status=resp.status_code, summary=summary, recorded=recorded)  # fmt: skip

    def _response_body(self, resp: http.Response, state: FlowState) -> bytes:
        if state.tee is None:
            return resp.get_content(strict=False) or b""
        body = state.tee.body()
        encoding_name = resp.headers.get("content-encoding", "")
        if encoding_name and encoding_name != "identity":
            try:
                decoded = encoding.decode(body, encoding_name)
                body = decoded if isinstance(decoded, bytes) else decoded.encode()
            except ValueError:
                log.warning("could not decode a %s stream; recording it as sent", encoding_name)
        return body

    def _record(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        body: bytes,
        summary: ResponseSummary,
        now: float,
    ) -> bool:
        assert (
            self.store is not None and flow.response is not None and state.forwarded_at is not None
        )
        tee = state.tee
        chunks = tee.chunks if tee is not None else []
        if chunks and tee is not None and tee.size != len(body):
            # The stream arrived content-encoded and was decoded: the received chunk sizes no
            # longer describe the body, so keep one chunk, at the time the last one arrived.
            chunks = [(chunks[-1][0], len(body))]
        rec = Recording(
            key=state.key,
            namespace=state.namespace,
            request=state.canonical,
            status=flow.response.status_code,
            headers=recordable_headers(flow.response.headers.items(multi=True)),
            body=body,
            chunks=chunks,
            recorded_at=time.time(),
            provider=state.endpoint.provider,
            model=summary.model or state.model,
            usage=summary.usage.as_dict() if summary.usage else None,
            duration_s=round(now - state.forwarded_at, 6),
            ttfc_s=_ttfc(state),
            seq=state.seq,
        )
        future = self.store.submit(rec)
        loop = asyncio.get_running_loop()

        def committed(done: concurrent.futures.Future[None]) -> None:
            try:
                loop.call_soon_threadsafe(self._after_write, state, done)
            except RuntimeError:  # the loop has closed (shutdown): nobody is waiting any more
                pass

        future.add_done_callback(committed)
        return True

    def _after_write(self, state: FlowState, done: concurrent.futures.Future[None]) -> None:
        error = done.exception()
        if error is not None:
            log.error("recording not saved: %s", error)
            self.metrics.store_write_failed(getattr(error, "reason", "io_error"))
            self.report.write_failures += 1
        else:
            self.report.written += 1
        self._release(state)

    def _release(self, state: FlowState) -> None:
        if not state.leader:
            return
        state.leader = False
        waiter = self._inflight.pop((state.namespace, state.key, state.seq), None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def error(self, flow: http.HTTPFlow) -> None:
        state: FlowState | None = flow.metadata.get(META)
        if state is None:
            return
        self._release(state)
        message = flow.error.msg if flow.error else "unknown error"
        body = state.tee.body() if state.tee is not None else b""
        summary = summarize(state.endpoint, body, "text/event-stream") if body else None
        log.warning(
            "%s %s failed: %s (not recorded)", flow.request.method, _masked_url(flow), message
        )
        self._finish(
            flow, state, self._clock(), body=body, status=None, summary=summary,
            usage=summary.usage if summary else None, error=message,
            error_type=_error_type(message, state),
        )  # fmt: skip

    # --- accounting ---------------------------------------------------------------------------

    def _finish(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        now: float,
        *,
        body: bytes,
        status: int | None,
        usage: Usage | None = None,
        response_model: str | None = None,
        summary: ResponseSummary | None = None,
        recorded: bool = False,
        error: str | None = None,
        error_type: str | None = None,
    ) -> None:
        ep = state.endpoint
        if error_type is None and status is not None and status >= 400 and state.forwarded_at:
            error_type = str(status)
        if state.outcome == "offline_miss" and error is None:
            error = f"llmreel cache miss (offline). {state.explanation}".strip()
            error_type = "offline_miss"
        cost = None
        if usage is not None:
            cost = self.pricer.cost(ep.provider, response_model or state.model, usage)
            if cost is None and (ep.provider, state.model or "") not in self._unpriced_seen:
                self._unpriced_seen.add((ep.provider, state.model or ""))
                log.warning(
                    "no price known for %s model %s: its cost is unknown. Add it to a "
                    "--prices file.", ep.provider, response_model or state.model,
                )  # fmt: skip
        resp = flow.response
        exchange = Exchange(
            id=new_id(),
            started=flow.request.timestamp_start,
            method=flow.request.method,
            url=_masked_url(flow),
            endpoint=ep,
            cache=state.outcome or state.plan.outcome,
            namespace=state.namespace,
            key=state.key,
            model=state.model,
            response_model=response_model,
            status=status,
            error=error,
            error_type=error_type,
            duration_s=max(now - state.started, 0.0),
            upstream_s=(now - state.forwarded_at) if state.forwarded_at is not None else None,
            ttfc_s=_ttfc(state),
            stream=state.tee is not None or bool(state.replay and state.replay.is_stream),
            usage=usage,
            cost_usd=cost,
            recorded=recorded,
            explanation=state.explanation,
            client=_peer(flow),
            listener=flow.client_conn.proxy_mode.full_spec,
            request_headers=state.request_headers,
            response_headers=mask_headers(resp.headers.items(multi=True)) if resp else [],
            request_body=state.request_body,
            response_body=body,
            summary=summary,
        )
        self.metrics.observe(exchange)
        if exchange.cache in ("miss", "offline_miss"):
            self.report.miss(Miss(exchange.method, exchange.url, state.key, state.namespace,
                                  exchange.cache, state.explanation))  # fmt: skip
        elif exchange.status is None:
            self.report.errors += 1
        for sink in self.sinks:
            try:
                sink(exchange)
            except Exception:
                log.exception("exchange sink %r failed", sink)


def _ttfc(state: FlowState) -> float | None:
    if state.tee is None or state.tee.first_chunk_at is None or state.forwarded_at is None:
        return None
    return round(state.tee.first_chunk_at - state.forwarded_at, 6)


def _error_type(message: str, state: FlowState) -> str:
    lowered = message.lower()
    if "client disconnected" in lowered:
        return "client_disconnected"
    if "timeout" in lowered or "timed out" in lowered:
        return "timeout"
    if state.tee is not None and state.tee.chunks:
        return "stream_cut"
    if "connect" in lowered or "refused" in lowered or "reset" in lowered:
        return "connection_error"
    return "protocol_error"


def _masked_url(flow: http.HTTPFlow) -> str:
    req = flow.request
    path, _, query = req.path.partition("?")
    url = f"{req.scheme}://{req.host}"
    if req.port != {"http": 80, "https": 443}.get(req.scheme):
        url += f":{req.port}"
    url += path
    if query:
        from urllib.parse import urlencode

        url += "?" + urlencode(mask_query(req.query.items(multi=True)), safe="[] ")
    return url


def _peer(flow: http.HTTPFlow) -> str:
    peer = flow.client_conn.peername
    return f"{peer[0]}:{peer[1]}" if peer else ""


def _address(server: Server) -> str:
    if server.address is None:
        return "the upstream"
    return f"{server.address[0]}:{server.address[1]}"


addons = [Recorder()]
