"""The routes of the embeddings explorer: the page and its JSON API (docs/ui.md).

GET /embeddings[?model=M&dim=D&exchange=ID&method=pca|umap]   the page
GET /api/embeddings/spaces                                    (model, dim, count) of each space
GET /api/embeddings/projection?model=M&dim=D[&method=...]     points, or {"state": "computing"}
GET /api/embeddings/neighbours?point=P[&k=10]                 nearest by cosine, with scores
GET /api/embeddings/rag?exchange=ID                           the points an exchange lights up
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llmreel.log.exchangelog import AmbiguousExchange, UnknownExchange

if TYPE_CHECKING:
    from llmreel.ui.app import UiState

__all__ = ["routes"]


def routes(
    ui: UiState, page: Callable[..., Response], problem: Callable[..., Response]
) -> list[Route]:
    explorer = ui.explorer

    def space_of(request: Request) -> tuple[str, int] | None:
        model = request.query_params.get("model") or ""
        dim = request.query_params.get("dim") or ""
        if not model or not dim.isdigit():
            return None
        return model, int(dim)

    async def embeddings_page(request: Request) -> Response:
        conn = ui.conn()
        spaces = await asyncio.to_thread(explorer.spaces, conn)
        method = request.query_params.get("method") or explorer.default_method()
        exchange = request.query_params.get("exchange") or ""
        chosen = space_of(request)
        rag: dict[str, Any] | None = None
        if exchange:
            try:
                rag = await asyncio.to_thread(explorer.rag, conn, exchange)
            except (UnknownExchange, AmbiguousExchange) as exc:
                return problem(request, 404, str(exc))
            if chosen is None and rag["spaces"]:
                chosen = (rag["spaces"][0]["model"], rag["spaces"][0]["dim"])
        if chosen is None and spaces:
            chosen = (spaces[0]["model"], spaces[0]["dim"])
        return page(request, "embeddings.html", spaces=spaces, chosen=chosen, method=method,
                    exchange=exchange, rag=rag)  # fmt: skip

    async def spaces_api(request: Request) -> Response:
        return _json(await asyncio.to_thread(explorer.spaces, ui.conn()))

    async def projection_api(request: Request) -> Response:
        key = space_of(request)
        if key is None:
            return problem(request, 400, "give model=NAME&dim=N (see /api/embeddings/spaces)")
        method = request.query_params.get("method") or explorer.default_method()
        try:
            data = await asyncio.to_thread(explorer.projection, ui.conn(), key, method)
        except ValueError as exc:
            return problem(request, 400, str(exc))
        return _json(data, status=202 if data["state"] == "computing" else 200)

    async def neighbours_api(request: Request) -> Response:
        point, k = request.query_params.get("point") or "", request.query_params.get("k") or "10"
        if not point.isdigit() or not k.isdigit():
            return problem(request, 400, "give point=ID (from the projection) and k=N")
        try:
            data = await asyncio.to_thread(explorer.neighbours, ui.conn(), int(point), int(k))
        except LookupError as exc:
            return problem(request, 404, str(exc))
        return _json(data)

    async def rag_api(request: Request) -> Response:
        exchange = request.query_params.get("exchange") or ""
        if not exchange:
            return problem(request, 400, "give exchange=ID")
        try:
            return _json(await asyncio.to_thread(explorer.rag, ui.conn(), exchange))
        except (UnknownExchange, AmbiguousExchange) as exc:
            return problem(request, 404, str(exc))

    return [
        Route("/embeddings", embeddings_page),
        Route("/api/embeddings/spaces", spaces_api),
        Route("/api/embeddings/projection", projection_api),
        Route("/api/embeddings/neighbours", neighbours_api),
        Route("/api/embeddings/rag", rag_api),
    ]


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json",
                    headers={"cache-control": "no-store"})  # fmt: skip
