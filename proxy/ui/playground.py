"""The playground (`/playground?from={exchange id}`) and its API: send a logged request again,
edited, beside the original answer; and "Run ×N", the stability probe of `llmreel probe`.

    POST /api/playground/run    {"from", "request", "edits", "n", "record", "key"}
    POST /api/playground/probe  {"from", "request", "edits", "n", "perturb", "seed", "threshold", "key"}

Runs go through an llmreel proxy (`llmreel.lab`) with the cache bypassed (`record: true` records
the answer), in namespace `playground` (probes: `probe`), and are found again in the log: the
API returns their exchange ids. With `accept: application/x-ndjson`, /run streams one JSON line
per change of an answer's text, then the result (docs/ui.md). A key typed in the page comes in
the request's `key` field, goes into the upstream request's header, and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from llmreel.core.credentials import key_source
from llmreel.core.stability import Answer, canonical, word_diff
from llmreel.lab.bodies import EDITABLE, apply_edits, read_fields
from llmreel.lab.draft import CannotAsk, Draft, host_of
from llmreel.lab.perturb import PERTURBATIONS, parse_perturbations
from llmreel.lab.probe import ProbeSpec, probe
from llmreel.lab.proxyproc import ProxyProcess
from llmreel.lab.runs import Lab, RunResult
from llmreel.log.exchangelog import AmbiguousExchange, UnknownExchange
from llmreel.providers import conversation
from llmreel.ui.security import same_origin, valid_csrf

__all__ = ["NAMESPACE", "routes"]

NAMESPACE: Final = "playground"
MAX_RUNS: Final = 20
MAX_PROBE: Final = 50
_MAX_BODY: Final = 4 << 20
NDJSON: Final = "application/x-ndjson"

Page = Callable[..., Response]
Problem = Callable[[Request, int, str], Response]


class BadRequest(ValueError):
    pass


class Forbidden(BadRequest):
    pass


@dataclass(slots=True)
class Ask:
    """One POST to the API, read and checked."""

    record: dict[str, Any]
    draft: Draft
    key: str
    n: int
    fields: dict[str, Any]


def routes(ui: Any, page: Page, problem: Problem) -> list[Route]:
    """The playground's routes for the UI `ui` (an `llmreel.ui.app.UiState`)."""
    settings = ui.settings
    proxy: str | ProxyProcess = settings.proxy or ProxyProcess(
        settings.store, confdir=settings.confdir
    )
    lab = Lab(ui.log, proxy=proxy, confdir=settings.confdir, offline=settings.offline)
    if isinstance(proxy, ProxyProcess):
        ui.closers.append(proxy.stop)

    async def playground_page(request: Request) -> Response:
        ident = request.query_params.get("from") or ""
        try:
            data = await asyncio.to_thread(_start, ui, lab, ident)
        except LookupError as exc:
            return problem(request, 404, str(exc))
        if request.url.path.startswith("/api/"):
            return _json(data)
        try:
            runs = int(request.query_params.get("probe") or 5)
        except ValueError:
            runs = 5
        return page(request, "playground.html", pg=data, probe_n=max(2, min(runs, MAX_PROBE)),
                    perturbations=PERTURBATIONS, draft_json=orjson.dumps(data["request"]).decode())  # fmt: skip

    async def run(request: Request) -> Response:
        try:
            ask = await _read(request, ui, MAX_RUNS)
            drafts = [ask.draft] * ask.n
            record_answers = bool(ask.fields.get("record"))
            lab.headers_for(ask.draft, original_host=_host(ask), typed_key=ask.key)
        except BadRequest as exc:
            return problem(request, 403 if isinstance(exc, Forbidden) else 400, str(exc))
        except LookupError as exc:
            return problem(request, 404, str(exc))
        except CannotAsk as exc:
            return _cannot(exc)
        original = _original(ask.record)

        def result(results: list[RunResult]) -> dict[str, Any]:
            return {
                "ids": [r.id for r in results],
                "runs": [
                    {**r.as_dict(), "diff": word_diff(original, canonical(r.answer()))}
                    for r in results
                ],
                "request": ask.draft.as_json(),
            }

        async def go(on_text: Any = None) -> list[RunResult]:
            return await lab.run(drafts, namespace=NAMESPACE, original_host=_host(ask),
                                 typed_key=ask.key, record=record_answers, on_text=on_text)  # fmt: skip

        if NDJSON not in (request.headers.get("accept") or ""):
            try:
                return _json(result(await go()))
            except CannotAsk as exc:
                return _cannot(exc)
        return StreamingResponse(_stream(go, result), media_type=NDJSON,
                                 headers={"cache-control": "no-store"})  # fmt: skip

    async def run_probe(request: Request) -> Response:
        try:
            ask = await _read(request, ui, MAX_PROBE, default_n=5)
            spec = ProbeSpec(
                n=ask.n, perturb=parse_perturbations(ask.fields.get("perturb") or ()),
                seed=int(ask.fields.get("seed") or 0),
                threshold=float(ask.fields.get("threshold") or 0.9),
            )  # fmt: skip
            lab.headers_for(ask.draft, original_host=_host(ask), typed_key=ask.key)
            report = await probe(lab, ask.record, spec, draft=ask.draft, typed_key=ask.key)
        except Forbidden as exc:
            return problem(request, 403, str(exc))
        except (BadRequest, ValueError, TypeError) as exc:
            return problem(
                request, 400, str(exc) if isinstance(exc, BadRequest | ValueError) else "bad input"
            )
        except LookupError as exc:
            return problem(request, 404, str(exc))
        except CannotAsk as exc:
            return _cannot(exc)
        if report["groups"]:
            first = report["groups"][0]["answer"]
            for grp in report["groups"]:
                grp["diff"] = word_diff(first, grp["answer"])
        return _json(report)

    return [
        Route("/playground", playground_page),
        Route("/api/playground", playground_page),
        Route("/api/playground/run", run, methods=["POST"]),
        Route("/api/playground/probe", run_probe, methods=["POST"]),
    ]


def _host(ask: Ask) -> str:
    return host_of(str(ask.record.get("url") or ""))


def _start(ui: Any, lab: Lab, ident: str) -> dict[str, Any]:
    """What the page starts from: the exchange's request, fields and answer."""
    record = _record(ui, ident)
    try:
        draft = Draft.from_record(record)
    except CannotAsk as exc:
        raise LookupError(str(exc)) from None
    ep = draft.endpoint(lab.hosts)
    api = ep.api if ep is not None else str(record.get("api") or "")
    source = key_source(ep.provider, ep.api) if ep is not None else None
    conv = conversation(record)
    parts = conv.response.parts if conv.response is not None else ()
    return {
        "from": record["id"],
        "model": record.get("model"),
        "provider": record.get("provider"),
        "api": api,
        "request": draft.as_json(),
        "fields": read_fields(api, draft.body),
        "original": {
            "answer": _original(record),
            "text": "\n".join(p.text for p in parts if p.kind == "text"),
            "status": record.get("status"),
            "cost_usd": record.get("cost_usd"),
        },
        "offline": lab.offline,
        # Whether the UI has the provider's key in its environment; never the key itself.
        "key_env": " or ".join(source.env) if source is not None else None,
        "env_key": bool(source and any(lab.environ.get(n) for n in source.env)),
    }


def _record(ui: Any, ident: str) -> dict[str, Any]:
    if not ident:
        raise LookupError("open the playground from an exchange: /playground?from={exchange id}")
    try:
        record: dict[str, Any] = ui.log.get(ident)
    except (UnknownExchange, AmbiguousExchange) as exc:
        raise LookupError(str(exc)) from None
    return record


def _original(record: dict[str, Any]) -> str:
    conv = conversation(record)
    parts = conv.response.parts if conv.response is not None else ()
    text = "\n".join(p.text for p in parts if p.kind == "text")
    calls = tuple((p.name or "", p.text) for p in parts if p.kind == "tool_call")
    return canonical(Answer(text, calls))


async def _read(request: Request, ui: Any, most: int, default_n: int = 1) -> Ask:
    """The POSTed JSON, after the CSRF and same-origin checks. Raises BadRequest, LookupError."""
    if not same_origin(request) or not valid_csrf(request.headers.get("x-csrf-token"), ui.csrf):
        raise Forbidden("this needs the page's CSRF token (x-csrf-token) and a request from "
                         "the UI's own origin: reload the page and try again")  # fmt: skip
    body = await request.body()
    if len(body) > _MAX_BODY:
        raise BadRequest("a playground request is at most 4 MiB")
    try:
        fields = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest('send JSON: {"from": "<exchange id>", "request": {...}, "n": 1}') from None
    if not isinstance(fields, dict):
        raise BadRequest('send a JSON object: {"from": "<exchange id>", ...}')
    record = await asyncio.to_thread(_record, ui, str(fields.get("from") or ""))
    try:
        draft = (Draft.from_json(fields["request"]) if fields.get("request") is not None
                 else Draft.from_record(record))  # fmt: skip
    except (ValueError, CannotAsk) as exc:
        raise BadRequest(str(exc)) from None
    edits = fields.get("edits") or {}
    if not isinstance(edits, dict) or set(edits) - set(EDITABLE):
        raise BadRequest(f'"edits" may set {", ".join(EDITABLE)}')
    ep = draft.endpoint()
    missed = apply_edits(ep.api if ep is not None else "", draft.body, edits)
    if missed:
        raise BadRequest(
            f"cannot set {', '.join(missed)} in this request (Gemini names its model in the URL): edit the URL or the JSON body"
        )
    n = fields.get("n", default_n)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= most:
        raise BadRequest(f'"n" is a whole number from 1 to {most}')
    key = fields.get("key") or ""
    if not isinstance(key, str) or len(key) > 4096:
        raise BadRequest('"key" is the API key as text')
    return Ask(record, draft, key.strip(), n, fields)


async def _stream(
    go: Callable[[Any], Any], result: Callable[[list[RunResult]], dict[str, Any]]
) -> AsyncIterator[bytes]:
    """NDJSON: {"event": "text", "run", "text"} lines while answers arrive, then "done"."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def on_text(index: int, text: str) -> None:
        await queue.put(_line({"event": "text", "run": index, "text": text}))

    async def work() -> None:
        try:
            await queue.put(_line({"event": "done", **result(await go(on_text))}))
        except CannotAsk as exc:
            await queue.put(_line({"event": "error", "error": str(exc), "reason": exc.reason}))
        finally:
            await queue.put(None)

    task = asyncio.create_task(work())
    try:
        while (line := await queue.get()) is not None:
            yield line
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _line(value: dict[str, Any]) -> bytes:
    return orjson.dumps(value, default=str) + b"\n"


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data, default=str), status_code=status,
                    media_type="application/json")  # fmt: skip


def _cannot(exc: CannotAsk) -> Response:
    """409: the request is fine, but cannot go upstream now (offline, no key, no proxy)."""
    return _json({"error": str(exc), "reason": exc.reason}, 409)
