"""llmreel's mitmproxy addon: record, replay, log and meter LLM API calls.

Load it into mitmproxy directly, from a checkout or an installed copy:

    mitmdump -s addons/recorder.py --set llmreel_store=.llmreel --set llmreel_mode=auto
    mitmdump -s "$(llmreel addon-path)"

or let `llmreel serve` run the same class. This file is glue: it turns flows into calls on the
`llmreel.engine.Engine`, which owns keys, single flight, lookups, recording and accounting, and
turns the engine's answers back into responses.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.net import encoding
from mitmproxy.proxy import server_hooks
from prometheus_client import CollectorRegistry

from llmreel.addons.replies import Replies
from llmreel.core.errors import ErrorReply
from llmreel.core.wire import (
    CACHE_HEADER,
    CONTROL_HEADERS,
    KEY_HEADER,
    is_loopback,
    tagged_headers,
)
from llmreel.engine import OPTIONS, ConfigError, Engine, FlowState, RequestHead, ResponseInfo
from llmreel.engine.control import CONTEXT_TOKEN
from llmreel.metering.exporter import MetricsServer
from llmreel.storage.lmdbstore import Store
from llmreel.storage.records import Recording
from llmreel.storage.stores import open_store

log = logging.getLogger("llmreel")

META = "llmreel"
#: llmreel's own request headers as they appear in raw header fields (lower-cased).
_CONTROL_NAMES = frozenset(name.encode() for name in CONTROL_HEADERS)


class Recorder:
    """The mitmproxy face of an `Engine`: one hook per event, each delegating to it."""

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        store_factory: Callable[[str], Store] = open_store,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = Engine(registry=registry, store_factory=store_factory, clock=clock)
        self.metrics_server = MetricsServer(self.engine.registry)
        self._own_ports: frozenset[int] = frozenset()
        self._conn_contexts: dict[str, str] = {}
        self._replies = Replies()
        self.is_running = False
        self.control_error: str | None = None

    # What callers and tests read of a running recorder.
    registry = property(lambda self: self.engine.registry)
    store = property(lambda self: self.engine.store)
    report = property(lambda self: self.engine.report)
    sinks = property(lambda self: self.engine.sinks)
    exchange_log = property(lambda self: self.engine.exchange_log)
    metrics_port = property(lambda self: self.metrics_server.port)
    metrics_error = property(lambda self: self.metrics_server.error)

    # --- lifecycle ----------------------------------------------------------------------------

    def load(self, loader: Any) -> None:
        for o in OPTIONS:
            loader.add_option(o.name, o.typespec, o.default, o.help, choices=o.choices)

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        # Option values are read here and handed over: hooks must not depend on the global ctx,
        # which belongs to whichever mitmproxy master was created last in this process.
        values = {o.name: getattr(opts, o.name) for o in OPTIONS}
        try:
            self.engine.configure(values, updated)
        except ConfigError as exc:
            raise exceptions.OptionsError(str(exc)) from exc
        # Hits must be served without an upstream connection, and offline mode must never open
        # one: with the default "eager" strategy mitmproxy connects before our hook runs.
        if "connection_strategy" in opts and opts.connection_strategy != "lazy":
            opts.connection_strategy = "lazy"

    def running(self) -> None:
        proxyserver = ctx.master.addons.get("proxyserver")
        if proxyserver is not None:
            # Requests aimed at our own listeners (a reverse listener reached through
            # HTTPS_PROXY) are handled where they land, not twice.
            self._own_ports = frozenset(a[1] for a in proxyserver.listen_addrs())
        self.metrics_server.start(ctx.options.llmreel_metrics_host, ctx.options.llmreel_metrics_port)
        control_port = ctx.options.llmreel_control_port
        if control_port < 0:
            self.is_running = True
            return
        # `running` must return at once; the control API starts on the loop, then we are ready.
        task = asyncio.get_running_loop().create_task(self.engine.control.start(control_port))
        task.add_done_callback(self._control_started)

    def _control_started(self, task: asyncio.Task[None]) -> None:
        if task.exception() is not None:
            self.control_error = f"cannot serve the control API: {task.exception()}"
            log.error("%s; pick another --control-port", self.control_error)
        self.is_running = True

    def http_connect(self, flow: http.HTTPFlow) -> None:
        # A context token in the proxy URL's user name arrives once, on the CONNECT.
        token = _context_token(flow.request.headers.get("proxy-authorization", ""))
        if token:
            self._conn_contexts[flow.client_conn.id] = token

    def client_disconnected(self, client: Any) -> None:
        self._conn_contexts.pop(client.id, None)

    def done(self) -> None:
        self.is_running = False
        self.metrics_server.stop()
        self.engine.close()

    # --- the offline guarantee ----------------------------------------------------------------

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        host, port = data.server.address or ("", 0)
        if not self.engine.allows_connection(host, port):
            data.server.error = self.engine.refusal(f"{host}:{port}" if host else "the upstream")

    # --- one flow -----------------------------------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.websocket is not None:
            return
        req = flow.request
        if req.port in self._own_ports and is_loopback(req.host):
            return
        context = self._conn_contexts.get(flow.client_conn.id) or _context_token(
            _field(req.headers, b"proxy-authorization")
        )
        state = self.engine.begin(_head(flow, context))
        if isinstance(state, ErrorReply):
            flow.response = http.Response.make(
                state.status, state.body, list(_encoded(state.headers))
            )
            return
        if state is None:
            return
        flow.metadata[META] = state
        answer = await self.engine.decide(state)
        if isinstance(answer, Recording) and self.engine.paced(answer):
            # Paced replay: the pacer on loopback answers, and mitmproxy streams it through.
            assert self.engine.pacer is not None
            host, port = await self.engine.pacer.address()
            state.paced = True
            req.url = f"http://{host}:{port}{self.engine.pacer.register(answer, state.key)}"
        elif isinstance(answer, Recording):
            flow.response = self._replies.response(answer, state.key)
        elif isinstance(answer, ErrorReply):
            flow.response = http.Response.make(
                answer.status, answer.body, tagged_headers(answer.headers, state.outcome, state.key)
            )
        else:
            # Plain bodies let the tee record SSE as the client sees it, chunk by chunk.
            req.headers["accept-encoding"] = "identity"

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state: FlowState | None = flow.metadata.get(META)
        resp = flow.response
        if state is not None and state.paced and resp is not None:
            resp.stream = True  # chunks reach the client as the pacer sends them
            return
        if state is None or resp is None or state.replay is not None or state.forwarded_at is None:
            return
        resp.headers[CACHE_HEADER] = state.outcome
        resp.headers[KEY_HEADER] = state.key
        length = resp.headers.get("content-length", "")
        tee = self.engine.tee(
            state, resp.headers.get("content-type", ""), int(length) if length.isdigit() else None
        )
        if tee is not None:
            resp.stream = tee

    async def response(self, flow: http.HTTPFlow) -> None:
        state: FlowState | None = flow.metadata.get(META)
        resp = flow.response
        if state is None or resp is None:
            return
        body = _body(resp, state)
        self.engine.finish(
            state, ResponseInfo(resp.status_code, _header_list(resp.headers), body)
        )

    def error(self, flow: http.HTTPFlow) -> None:
        state: FlowState | None = flow.metadata.get(META)
        if state is not None:
            self.engine.fail(state, flow.error.msg if flow.error else "unknown error")


def _context_token(proxy_authorization: str) -> str:
    """A control API token given as the proxy URL's user name (`http://ctx…@host:port`)."""
    scheme, _, value = proxy_authorization.partition(" ")
    if scheme.lower() != "basic" or not value:
        return ""
    try:
        user = base64.b64decode(value).decode("latin-1").partition(":")[0]
    except ValueError:
        return ""
    return user if CONTEXT_TOKEN.fullmatch(user) else ""


def _head(flow: http.HTTPFlow, context: str) -> RequestHead:
    req = flow.request
    controls: dict[str, str] = {}
    if any(name.lower() in _CONTROL_NAMES for name, _ in req.headers.fields):
        controls = {n: value for n in CONTROL_HEADERS if (value := req.headers.pop(n, None))}
    peer = flow.client_conn.peername
    path, has_query, _ = req.path.partition("?")
    return RequestHead(
        method=req.method,
        scheme=req.scheme,
        host=req.host,
        port=req.port,
        path=path,
        query=list(req.query.items(multi=True)) if has_query else [],
        headers=_header_list(req.headers),
        read_body=lambda: _content(req),
        controls=controls,
        started_unix=req.timestamp_start,
        client=f"{peer[0]}:{peer[1]}" if peer else "",
        listener=flow.client_conn.proxy_mode.full_spec,
        context=context,
    )


def _header_list(headers: http.Headers) -> list[tuple[str, str]]:
    """`list(headers.items(multi=True))`, decoded straight off the raw fields."""
    return [
        (k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
        for k, v in headers.fields
    ]


def _field(headers: http.Headers, name: bytes) -> str:
    """The first value of header `name` (lower-case), read off the raw fields: the mapping
    interface takes several calls per lookup, on every request."""
    for key, value in headers.fields:
        if key.lower() == name:
            return value.decode("utf-8", "surrogateescape")
    return ""


def _content(req: http.Request) -> bytes:
    """The request body, content-decoded (as `get_content(strict=False)`)."""
    encoded = any(key.lower() == b"content-encoding" for key, _ in req.headers.fields)
    if req.raw_content is not None and not encoded:
        return req.raw_content
    return req.get_content(strict=False) or b""


def _body(resp: http.Response, state: FlowState) -> bytes:
    """The response body, content-decoded; for a teed stream, the tee's copy."""
    if state.replay is not None:
        return state.replay.body
    if state.tee is None:
        return resp.get_content(strict=False) or b""
    body = state.tee.body()
    encoding_name = resp.headers.get("content-encoding", "")
    if body and encoding_name and encoding_name != "identity":
        try:
            decoded = encoding.decode(body, encoding_name)
            body = decoded if isinstance(decoded, bytes) else decoded.encode()
        except ValueError:
            log.warning("could not decode a %s stream; recording it as sent", encoding_name)
    return body


def _encoded(headers: tuple[tuple[str, str], ...]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in headers]


addons = [Recorder()]
