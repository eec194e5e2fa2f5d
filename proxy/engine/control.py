"""The control API: per-test scoping for any test runner, over HTTP on loopback.

A test runner (Jest, go test, a shell script) creates a *context* and gets a token; calls that
carry it (as the proxy URL's user name, `http://TOKEN@127.0.0.1:8080`, or in an
`llmreel-context` header) use that context's namespace and session. Parallel test processes
sharing one proxy each keep their own. The API also lists the exchanges since a marker and
returns the run report. See docs/control.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from llmreel.core.exchange import Exchange
from llmreel.engine.loopback import TooLarge, read_request, status_line
from llmreel.storage.lmdbstore import validate_namespace

log = logging.getLogger("llmreel")

MAX_CONTEXTS = 10_000
#: What a context token looks like (so a proxy-auth user name is never taken for one).
CONTEXT_TOKEN = re.compile(r"ctx[0-9a-f]{16}")
KEEP_EXCHANGES = 10_000
_MAX_BODY = 64 * 1024


@dataclass(slots=True)
class Context:
    namespace: str | None = None
    session: str | None = None


class Contexts:
    """Contexts by token, at most `MAX_CONTEXTS` (the least recently used go first). The
    context with the empty token applies to calls that carry none."""

    def __init__(self) -> None:
        self._by_token: OrderedDict[str, Context] = OrderedDict()
        self.default = Context()

    def create(self, namespace: str | None, session: str | None) -> str:
        token = "ctx" + secrets.token_hex(8)
        self._by_token[token] = Context(_namespace(namespace), session)
        while len(self._by_token) > MAX_CONTEXTS:
            self._by_token.popitem(last=False)
        return token

    def get(self, token: str) -> Context | None:
        if not token:
            return self.default
        found = self._by_token.get(token)
        if found is not None:
            self._by_token.move_to_end(token)
        return found

    def __len__(self) -> int:
        return len(self._by_token)


class Recent:
    """The last `KEEP_EXCHANGES` exchanges, numbered, for `GET /exchanges?since=MARKER`."""

    def __init__(self) -> None:
        self._items: deque[tuple[int, str, dict[str, Any]]] = deque(maxlen=KEEP_EXCHANGES)
        self.marker = 0

    def add(self, ex: Exchange) -> None:
        self.marker += 1
        self._items.append((self.marker, ex.context, summary(ex)))

    def since(self, marker: int, context: str | None) -> list[dict[str, Any]]:
        return [
            {"marker": n, **item}
            for n, ctx, item in self._items
            if n > marker and (context is None or ctx == context)
        ]


def summary(ex: Exchange) -> dict[str, Any]:
    usage = ex.usage.as_dict() if ex.usage is not None else None
    return {
        "id": ex.id, "method": ex.method, "url": ex.url, "provider": ex.endpoint.provider,
        "operation": ex.endpoint.operation, "model": ex.model, "cache": ex.cache,
        "status": ex.status, "namespace": ex.namespace, "session": ex.session or None,
        "input_tokens": usage["input"] if usage else None,
        "output_tokens": usage["output"] if usage else None, "cost_usd": ex.cost_usd,
        "duration_s": round(ex.duration_s, 6), "error_type": ex.error_type,
        "explanation": ex.explanation or None,
    }  # fmt: skip


class ControlServer:
    """A small JSON API on 127.0.0.1, in the proxy's own event loop."""

    def __init__(self, contexts: Contexts, recent: Recent, report: Any) -> None:
        self.contexts = contexts
        self.recent = recent
        self.report = report
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, port: int) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
            self.port = int(self._server.sockets[0].getsockname()[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    @property
    def url(self) -> str | None:
        return f"http://127.0.0.1:{self.port}" if self._server is not None else None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    request = await read_request(reader, _MAX_BODY)
                except TooLarge as exc:
                    _write(writer, 413, {"error": str(exc)}, close=True)
                    break
                status, payload = self.handle(request.method, request.target, request.body)
                close = request.headers.get("connection", "").lower() == "close"
                _write(writer, status, payload, close=close)
                await writer.drain()
                if close:
                    break
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
            ValueError,
        ):
            pass
        finally:
            with contextlib.suppress(ConnectionError):
                writer.close()

    def handle(self, method: str, target: str, body: bytes) -> tuple[int, Any]:
        """One request: (status, JSON payload). Errors say what to send instead."""
        url = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = [p for p in url.path.split("/") if p]
        try:
            data = orjson.loads(body) if body else {}
            if not isinstance(data, dict):
                raise ValueError("the body must be a JSON object")
            if method == "GET" and not parts:
                return 200, {"service": "llmreel control", "contexts": len(self.contexts),
                             "marker": self.recent.marker}  # fmt: skip
            if method == "POST" and parts == ["contexts"]:
                token = self.contexts.create(_str(data, "namespace"), _str(data, "session"))
                return 201, {"token": token}
            if method == "PUT" and parts[:1] in (["contexts"], ["context"]) and len(parts) <= 2:
                token = parts[1] if len(parts) == 2 else ""
                ctx = self.contexts.get(token)
                if ctx is None:
                    return 404, {"error": f"no context {token!r}; create one with POST /contexts"}
                if "namespace" in data:
                    ctx.namespace = _namespace(_str(data, "namespace"))
                if "session" in data:
                    ctx.session = _str(data, "session")
                return 200, {"token": token, "namespace": ctx.namespace, "session": ctx.session}
            if method == "GET" and parts == ["exchanges"]:
                since = int(query.get("since", "0") or 0)
                items = self.recent.since(since, query.get("context"))
                return 200, {"items": items, "marker": self.recent.marker}
            if method == "GET" and parts == ["report"]:
                return 200, self.report.as_dict()
        except (ValueError, orjson.JSONDecodeError) as exc:
            return 400, {"error": str(exc)}
        return 404, {"error": f"no route {method} {url.path}; see docs/control.md"}


def _str(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} must be a string or null")
    return value


def _namespace(value: str | None) -> str | None:
    return validate_namespace(value) if value else None


def _write(writer: asyncio.StreamWriter, status: int, payload: Any, *, close: bool) -> None:
    body = orjson.dumps(payload) + b"\n"
    writer.write(
        f"{status_line(status)}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{'connection: close' + chr(13) + chr(10) if close else ''}\r\n".encode()
        + body
    )
