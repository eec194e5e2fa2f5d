"""The UI's web application: server-rendered pages and their JSON twins, over one query layer.

Starlette routes, Jinja2 templates (autoescaped), a few static files. Reads the log and the index;
the only writes are labels. Each page's data is a `proxy.ui.queries` call; the page renders it,
`/api/...` returns it as JSON.

    app = create_app(UiSettings(store=".llmreel"))
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, quote, urlencode

import orjson
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from llmreel.core.wire import is_loopback
from llmreel.log.exchangelog import ExchangeLog
from llmreel.log.labels import LabelError, Labels, Target
from llmreel.storage.lmdbstore import LmdbStore
from llmreel.ui import playground, render
from llmreel.ui.embeddings import Explorer
from llmreel.ui.embpages import routes as embedding_routes
from llmreel.ui.index import Index, Indexer
from llmreel.ui.queries import (
    ExchangeQuery,
    NotFound,
    QueryError,
    exchange_detail,
    list_exchanges,
    list_threads,
    thread_detail,
)
from llmreel.ui.security import BasicAuth, SecurityHeaders, same_origin, valid_csrf

__all__ = ["UiSettings", "UiState", "create_app"]

_STATIC: Final = Path(__file__).parent / "static"
#: How often the event stream looks for newly indexed exchanges.
EVENT_POLL_S: Final = 0.4
_HEARTBEAT_S: Final = 15.0
_MAX_FORM: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class UiSettings:
    store: str = ".llmreel"
    host: str = "127.0.0.1"
    auth: tuple[str, str] | None = None
    index_interval_s: float = 0.25
    proxy: str = ""
    """The llmreel proxy playground runs go through; empty: one started on first use."""
    offline: bool = False
    """The playground and probes refuse to call upstream."""
    confdir: str = "~/.mitmproxy"


class UiState:
    """The store, log, labels and index one UI serves, with a database connection per thread."""

    def __init__(self, settings: UiSettings) -> None:
        self.settings = settings
        self.store = LmdbStore(settings.store, create=False)
        self.log = ExchangeLog(self.store, retention_s=None)  # the proxy prunes, not the UI
        self.labels = Labels(self.store)
        self.index = Index(settings.store)
        self.indexer = Indexer(
            self.index, self.log, self.labels, interval_s=settings.index_interval_s
        )
        self.explorer = Explorer(self.index.connect, self.log)
        self.csrf = secrets.token_urlsafe(32)
        #: Called by close(), e.g. to stop the playground's proxy.
        self.closers: list[Callable[[], None]] = []
        self._local = threading.local()
        self._conns: list[Any] = []
        self._conns_lock = threading.Lock()

    def conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self.index.connect()
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def start(self) -> None:
        self.indexer.start()

    def close(self) -> None:
        for closer in self.closers:
            closer()
        self.indexer.stop()
        self.explorer.close()
        with self._conns_lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        self.store.close()


def create_app(settings: UiSettings, state: UiState | None = None) -> Starlette:
    """The ASGI app. Starting it starts the indexer thread; stopping it closes the store."""
    ui = state or UiState(settings)
    templates = _templates()

    def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        context.update(request=request, csrf=ui.csrf, indexing=_indexing(ui))
        html = templates.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status)

    def problem(request: Request, status: int, message: str) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=status)
        return page(request, "error.html", status=status, message=message)

    async def exchanges_page(request: Request) -> Response:
        try:
            query = ExchangeQuery.parse(request.query_params)
        except QueryError as exc:
            return problem(request, 400, str(exc))
        data = await _off_loop(list_exchanges, ui.conn(), query)
        if request.url.path.startswith("/api/"):
            return _json(data)
        name = "_results.html" if request.query_params.get("fragment") else "exchanges.html"
        return page(request, name, query=query, data=data, choices=await _off_loop(_choices, ui))

    async def one(request: Request, template: str, name: str, fetch: Any, *args: Any) -> Response:
        """A page (or its JSON twin) about one thing, or 404."""
        try:
            data = await _off_loop(fetch, ui.conn(), *args, request.path_params["id"])
        except NotFound as exc:
            return problem(request, 404, str(exc))
        if request.url.path.startswith("/api/"):
            return _json(data)
        return page(request, template, **{name: data})

    async def exchange_page(request: Request) -> Response:
        return await one(request, "exchange.html", "ex", exchange_detail, ui.log, ui.labels)

    async def threads_page(request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit") or 100)
        except ValueError:
            return problem(request, 400, "limit: give a number")
        run = request.query_params.get("run") or ""
        label = request.query_params.get("label") or ""
        data = await _off_loop(
            list_threads, ui.conn(), limit=max(1, min(limit, 1000)), run=run, label=label
        )
        if request.url.path.startswith("/api/"):
            return _json(data)
        return page(request, "threads.html", data=data, run=run, label=label)

    async def thread_page(request: Request) -> Response:
        return await one(request, "thread.html", "thread", thread_detail, ui.labels)

    async def label(request: Request) -> Response:
        kind = (
            "thread" if request.url.path.startswith(("/api/threads/", "/threads/")) else "exchange"
        )
        ident = request.path_params["id"]
        body = await request.body()
        if len(body) > _MAX_FORM:
            return problem(request, 413, "a label and note are at most 64 KiB")
        is_json = (request.headers.get("content-type") or "").startswith("application/json")
        try:
            fields = orjson.loads(body) if is_json else dict(parse_qsl(body.decode("utf-8")))
        except (orjson.JSONDecodeError, UnicodeDecodeError):
            return problem(request, 400, 'send {"label": "good", "note": "..."}')
        if not isinstance(fields, dict):
            return problem(request, 400, 'send {"label": "good", "note": "..."}')
        token = request.headers.get("x-csrf-token") or fields.get("csrf")
        if not same_origin(request) or not valid_csrf(token, ui.csrf):
            return problem(request, 403, "this change needs the page's CSRF token and a request "
                           "from the UI's own origin: reload the page and try again")  # fmt: skip
        target = Target("thread" if kind == "thread" else "exchange", ident)
        try:
            if kind == "exchange":
                await _off_loop(exchange_detail, ui.conn(), ui.log, ui.labels, ident)
            elif not await _off_loop(_thread_exists, ui, ident):
                raise NotFound(f"no thread {ident!r}")
            text = str(fields.get("label") or "")
            if text:
                saved = await _off_loop(ui.labels.set, target, text, str(fields.get("note") or ""))
            else:
                await _off_loop(ui.labels.remove, target)
            await _off_loop(ui.indexer.sync_labels)
        except NotFound as exc:
            return problem(request, 404, str(exc))
        except LabelError as exc:
            return problem(request, 400, str(exc))
        if is_json:
            return _json({"target": kind, "id": ident, "label": saved.as_dict() if text else None})
        where = "/threads/" if kind == "thread" else "/exchanges/"
        return RedirectResponse(where + quote(ident, safe=":"), status_code=303)

    async def events(request: Request) -> Response:
        return StreamingResponse(_event_stream(ui, request), media_type="text/event-stream",
                                 headers={"cache-control": "no-store"})  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if state is None:
            ui.start()
        try:
            yield
        finally:
            if state is None:
                await asyncio.to_thread(ui.close)

    routes = [
        Route("/", exchanges_page),
        Route("/api/exchanges", exchanges_page),
        Route("/exchanges/{id}", exchange_page),
        Route("/api/exchanges/{id}", exchange_page),
        Route("/exchanges/{id}/labels", label, methods=["POST"]),
        Route("/api/exchanges/{id}/labels", label, methods=["POST"]),
        Route("/threads", threads_page),
        Route("/api/threads", threads_page),
        Route("/threads/{id:path}/labels", label, methods=["POST"]),
        Route("/api/threads/{id:path}/labels", label, methods=["POST"]),
        Route("/threads/{id:path}", thread_page),
        Route("/api/threads/{id:path}", thread_page),
        Route("/api/events", events),
        *playground.routes(ui, page, problem),
        *embedding_routes(ui, page, problem),
        Mount("/static", StaticFiles(directory=_STATIC, follow_symlink=True), name="static"),
    ]
    middleware = [Middleware(SecurityHeaders)]
    if settings.auth is not None:
        middleware.append(Middleware(BasicAuth, user=settings.auth[0], password=settings.auth[1]))
    if is_loopback(settings.host):
        # A page on another site cannot reach a loopback UI through DNS rebinding.
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=[
            "127.0.0.1", "localhost", "[::1]", "::1", settings.host]))  # fmt: skip
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.ui = ui
    return app


async def _off_loop(func: Any, *args: Any, **kw: Any) -> Any:
    # SQLite and LMDB calls block: keep them off the UI's event loop (the SSE streams live there).
    return await asyncio.to_thread(func, *args, **kw)


def _json(data: Any) -> Response:
    return Response(orjson.dumps(data, default=str), media_type="application/json")


def _thread_exists(ui: UiState, ident: str) -> bool:
    return ui.conn().execute("SELECT 1 FROM threads WHERE id = ?", (ident,)).fetchone() is not None


def _choices(ui: UiState) -> dict[str, list[str]]:
    """Values seen in the index, for the filters' pick lists."""
    conn = ui.conn()
    out: dict[str, list[str]] = {}
    for column in ("model", "provider", "namespace"):
        out[column] = [r[0] for r in conn.execute(
            "SELECT value FROM facets WHERE name = ? ORDER BY value LIMIT 200", (column,))]  # fmt: skip
    out["label"] = [r[0] for r in conn.execute("SELECT DISTINCT label FROM labels ORDER BY 1")]
    return out


def _indexing(ui: UiState) -> dict[str, Any]:
    return {"error": ui.indexer.error}


async def _event_stream(ui: UiState, request: Request) -> AsyncIterator[bytes]:
    """`data: {"ids": [...]}` for each batch of newly indexed exchanges; a comment as heartbeat."""
    conn = ui.index.connect()
    try:
        last = await asyncio.to_thread(_max_rowid, conn)
        yield b"retry: 2000\n\n"
        idle = 0.0
        while not await request.is_disconnected():
            await asyncio.sleep(EVENT_POLL_S)
            rows = await asyncio.to_thread(_new_ids, conn, last)
            if rows:
                last = rows[-1][0]
                ids = [r[1] for r in rows]
                yield b"event: exchanges\ndata: " + orjson.dumps({"ids": ids}) + b"\n\n"
                idle = 0.0
            else:
                idle += EVENT_POLL_S
                if idle >= _HEARTBEAT_S:
                    yield b": ping\n\n"
                    idle = 0.0
    finally:
        conn.close()


def _max_rowid(conn: Any) -> int:
    row = conn.execute("SELECT max(rowid) FROM ex").fetchone()
    return int(row[0] or 0)


def _new_ids(conn: Any, after: int) -> list[tuple[int, str]]:
    return [(r[0], r[1]) for r in conn.execute(
        "SELECT rowid, id FROM ex WHERE rowid > ? ORDER BY rowid LIMIT 500", (after,))]  # fmt: skip


def _templates() -> Environment:
    env = Environment(
        loader=PackageLoader("llmreel.ui", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    render.install(env)
    env.globals["qs"] = _qs
    return env


def _qs(params: Mapping[str, str]) -> str:
    return ("?" + urlencode(params)) if params else ""
