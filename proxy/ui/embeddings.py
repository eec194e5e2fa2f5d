"""The embeddings explorer (`/embeddings`): the spaces (model, dimensions) of the logged embedding
calls, their 2-D projections, nearest neighbours, and the chunks a chat exchange's prompt holds.

A projection is computed off the request path, in one worker thread, and cached per space and
*generation* (how many points the space has and its newest one): the page asks, gets "computing"
while the worker runs, and asks again. Points travel as compact JSON: coordinates as base64
float32, categories as small code arrays, texts cut to a preview (the full text comes with the
neighbours).
"""

from __future__ import annotations

import base64
import logging
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from llmreel.log.exchangelog import ExchangeLog
from llmreel.providers import conversation
from llmreel.providers.embeddings import EMBEDDING_APIS
from llmreel.ui.projection import METHODS, Matrix, cosine_neighbours, has_umap, project, unit_rows
from llmreel.ui.rag import Candidate, match, prompt_texts

__all__ = ["Explorer", "Space", "SpaceKey"]

log = logging.getLogger(__name__)

PREVIEW: Final = 100
FULL_TEXT: Final = 4000
MAX_NEIGHBOURS: Final = 50
#: Projections kept in memory (each holds its space's unit vectors: 20,000 × 1,536 is 120 MB).
_KEEP: Final = 4

SpaceKey = tuple[str, int]


@dataclass(slots=True)
class Space:
    """One (model, dim) space at one generation: its points, unit vectors and projection."""

    key: SpaceKey
    method: str
    generation: tuple[int, int]
    points: list[int] = field(default_factory=list)
    unit: Matrix | None = None
    payload: dict[str, Any] | None = None
    error: str | None = None
    future: Future[None] | None = None

    def row_of(self, point: int) -> int | None:
        i = int(np.searchsorted(self.points, point))
        return i if i < len(self.points) and self.points[i] == point else None


class Explorer:
    """Spaces and their projections for one UI; `connect` opens an index connection."""

    def __init__(
        self, connect: Callable[[], sqlite3.Connection], exchange_log: ExchangeLog
    ) -> None:
        self._connect = connect
        self._log = exchange_log
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="llmreel-ui-projection")
        self._lock = threading.Lock()
        self._spaces: dict[tuple[SpaceKey, str], Space] = {}
        """The latest projection job of each (space, method)."""
        self._ready: dict[tuple[SpaceKey, str], Space] = {}
        """The latest finished one, served while a newer one is computed."""

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def default_method() -> str:
        return "umap" if has_umap() else "pca"

    # --- what there is ------------------------------------------------------------------------

    @staticmethod
    def spaces(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        """Every (model, dim) with its number of points, the largest first."""
        return [
            {"model": r[0], "dim": r[1], "count": r[2]}
            for r in conn.execute(
                "SELECT model, dim, count(*) FROM emb GROUP BY model, dim ORDER BY 3 DESC, 1, 2"
            )
        ]

    # --- projections (computed by the worker) -------------------------------------------------

    def projection(self, conn: sqlite3.Connection, key: SpaceKey, method: str) -> dict[str, Any]:
        """The space's points and coordinates when ready, else `{"state": "computing"}`."""
        if method not in METHODS:
            raise ValueError(f"method: one of {', '.join(METHODS)}")
        if method == "umap" and not has_umap():
            raise ValueError("method umap needs the optional extra: pip install 'llmreel[umap]'")
        space = self._current(conn, key, method)
        if space.error is not None:
            return {"state": "error", "error": space.error}
        if space.payload is not None:
            return space.payload
        with self._lock:
            ready = self._ready.get((key, method))
        if ready is not None and ready.payload is not None:
            # New points arrived and are being projected: draw what is ready meanwhile.
            return {**ready.payload, "stale": True}
        return {"state": "computing", "method": method, "count": space.generation[0]}

    def _current(self, conn: sqlite3.Connection, key: SpaceKey, method: str) -> Space:
        """The space's latest projection job; a new one only when the points changed and no
        job for the space is running (a busy log must not queue a job per request)."""
        generation = _generation(conn, key)
        with self._lock:
            space = self._spaces.get((key, method))
            busy = space is not None and space.future is not None and not space.future.done()
            if space is None or (space.generation != generation and not busy):
                space = Space(key, method, generation)
                self._spaces[(key, method)] = space
                space.future = self._worker.submit(self._compute, space)
                for kept in (self._spaces, self._ready):
                    while len(kept) > _KEEP:
                        kept.pop(next(iter(kept)))
            return space

    def wait(self, conn: sqlite3.Connection, key: SpaceKey, method: str, timeout: float) -> None:
        """Block until the space's projection is done (tests and the benchmark)."""
        space = self._current(conn, key, method)
        if space.future is not None:
            space.future.result(timeout)

    def _compute(self, space: Space) -> None:
        conn = self._connect()
        try:
            rows = conn.execute(
                "SELECT rowid, id, idx, namespace, run, text, vec FROM emb"
                " WHERE model = ? AND dim = ? ORDER BY rowid",
                space.key,
            ).fetchall()
            flat = np.frombuffer(b"".join(r[6] for r in rows), dtype="<f4")
            matrix = flat.reshape(len(rows), space.key[1]).astype(np.float32)
            unit = unit_rows(matrix)
            xy, used = project(unit, space.method)
            space.points = [r[0] for r in rows]
            space.unit = unit
            space.payload = _payload(space, rows, xy, used)
            with self._lock:
                self._ready[(space.key, space.method)] = space
        except Exception as exc:  # noqa: BLE001 - the page shows it instead of computing forever
            log.warning("projecting %s failed: %s", space.key, exc)
            space.error = f"projection failed: {exc}"
        finally:
            conn.close()

    # --- neighbours ---------------------------------------------------------------------------

    def neighbours(self, conn: sqlite3.Connection, point: int, k: int) -> dict[str, Any]:
        """The `k` points of the same space most similar to `point` by cosine, with their scores."""
        row = conn.execute("SELECT model, dim FROM emb WHERE rowid = ?", (point,)).fetchone()
        if row is None:
            raise LookupError(f"no embedded point {point}: reload the page")
        key: SpaceKey = (row[0], row[1])
        space = self._unit_space(conn, key)
        i = space.row_of(point)
        if i is None or space.unit is None:
            raise LookupError(f"point {point} is not in the projection yet: reload the page")
        found = cosine_neighbours(space.unit, i, max(1, min(k, MAX_NEIGHBOURS)))
        ids = [point, *(space.points[j] for j, _ in found)]
        details = _details(conn, ids)
        return {
            "point": details[point],
            "neighbours": [
                {**details[space.points[j]], "score": round(score, 6)} for j, score in found
            ],
        }

    def _unit_space(self, conn: sqlite3.Connection, key: SpaceKey) -> Space:
        """A finished space with the unit vectors of `key` (any method), computing one if none."""
        with self._lock:
            ready = [s for (k, _), s in self._ready.items() if k == key]
        if ready:
            return ready[-1]
        space = self._current(conn, key, "pca")
        if space.future is not None:
            space.future.result(300)
        return space

    # --- RAG ----------------------------------------------------------------------------------

    def rag(self, conn: sqlite3.Connection, exchange_id: str) -> dict[str, Any]:
        """The points an exchange lights up: its own inputs for an embedding call, else the
        embedded texts its prompt contains (`llmreel.ui.rag`), by space."""
        record = self._log.get(exchange_id)
        ident = str(record["id"])
        if record.get("api") in EMBEDDING_APIS:
            rows = conn.execute("SELECT rowid, model, dim FROM emb WHERE id = ?", (ident,))
            kinds = {(r[0], r[1], r[2]): "call" for r in rows}
        else:
            prompt, last_user = prompt_texts(conversation(record))
            unix = float(conn.execute("SELECT unix FROM ex WHERE id = ?", (ident,)).fetchone()[0]
                         or 0.0) if prompt else 0.0  # fmt: skip
            kinds = {}
            spaces = {
                (r[1], r[2]) for r in conn.execute("SELECT 0, model, dim FROM emb GROUP BY 2, 3")
            }
            for model, dim in spaces:
                candidates = [
                    Candidate(r[0], r[1], r[2] or 0.0, r[3])
                    for r in conn.execute(
                        "SELECT rowid, norm, unix, size FROM emb WHERE model = ? AND dim = ?"
                        " AND norm IS NOT NULL",
                        (model, dim),
                    )
                ]
                found = match(prompt, last_user, candidates, unix) if prompt else {}
                kinds.update({(p, model, dim): kind for p, kind in found.items()})
        by_space: dict[SpaceKey, dict[str, str]] = {}
        for (point, model, dim), kind in kinds.items():
            by_space.setdefault((model, dim), {})[str(point)] = kind
        return {
            "exchange": ident,
            "api": record.get("api"),
            "model": record.get("model"),
            "spaces": [
                {"model": m, "dim": d, "points": pts}
                for (m, d), pts in sorted(by_space.items(), key=lambda kv: -len(kv[1]))
            ],
        }


def _generation(conn: sqlite3.Connection, key: SpaceKey) -> tuple[int, int]:
    row = conn.execute(
        "SELECT count(*), coalesce(max(rowid), 0) FROM emb WHERE model = ? AND dim = ?", key
    ).fetchone()
    return int(row[0]), int(row[1])


def _payload(space: Space, rows: list[Any], xy: Matrix, method: str) -> dict[str, Any]:
    """The points as columns: ids, base64 float32 coordinates, category codes and previews."""
    categories: dict[str, dict[str, Any]] = {}
    for name, column in (("namespace", 3), ("run", 4), ("call", 1)):
        values: dict[str, int] = {}
        codes = [values.setdefault(str(r[column] or "-"), len(values)) for r in rows]
        categories[name] = {"values": list(values), "codes": codes}
    categories["model"] = {"values": [space.key[0]], "codes": [0] * len(rows)}
    return {
        "state": "ready",
        "model": space.key[0],
        "dim": space.key[1],
        "method": method,
        "count": len(rows),
        "generation": list(space.generation),
        "points": [r[0] for r in rows],
        "index": [r[2] for r in rows],
        "xy": base64.b64encode(np.ascontiguousarray(xy, dtype="<f4").tobytes()).decode("ascii"),
        "text": [_preview(r[5]) for r in rows],
        "categories": categories,
    }


def _preview(text: str | None) -> str:
    if text is None:
        return "(sent as tokens)"
    text = " ".join(text.split())
    return text if len(text) <= PREVIEW else text[: PREVIEW - 1] + "…"


def _details(conn: sqlite3.Connection, points: list[int]) -> dict[int, dict[str, Any]]:
    marks = ",".join("?" * len(points))
    out: dict[int, dict[str, Any]] = {}
    for r in conn.execute(
        f"SELECT rowid, id, idx, namespace, run, text FROM emb WHERE rowid IN ({marks})", points
    ):
        text = r[5] if r[5] is not None else "(sent as tokens)"
        out[r[0]] = {
            "point": r[0],
            "exchange": r[1],
            "index": r[2],
            "namespace": r[3],
            "run": r[4],
            "text": text[:FULL_TEXT],
        }
    return out
