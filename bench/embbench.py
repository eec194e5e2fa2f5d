"""The embeddings explorer at scale: 20,000 logged embeddings (1536 dimensions, in calls of 100
inputs, as an indexing job makes them), then what each costs in the log, the index build, the
projection (computed by the UI's worker), a nearest-neighbour query, and the page drawn in Debian's
chromium, timed from navigation start to the points on the canvas.

    uv run python -m bench.embbench --points 20000 [--umap]
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from llmreel.log.exchangelog import ExchangeLog
from llmreel.log.packing import pack_exchange
from llmreel.storage.lmdbstore import LmdbStore
from llmreel.ui.server import UiProcess
from tests.test_exchangelog import make_exchange

from .uibench import index_seconds

CHROMIUM = "/usr/bin/chromium"
MODEL = "text-embedding-3-small"
BATCH = 100


def calls(points: int, dim: int, *, floats: bool) -> list[Any]:
    """Exchanges of `points` embeddings around 40 topics (so that the cloud has structure)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, dim)).astype(np.float32)
    out = []
    started = time.time() - 3600
    for first in range(0, points, BATCH):
        n = min(BATCH, points - first)
        topics = rng.integers(0, len(centres), n)
        vectors = centres[topics] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        texts = [
            f"Chunk {first + i} about topic {t}: " + "lorem ipsum dolor " * 8
            for i, t in enumerate(topics)
        ]
        data = [
            {"object": "embedding", "index": i,
             "embedding": [float(str(v)) for v in vec] if floats else base64.b64encode(vec.astype("<f4").tobytes()).decode()}
            for i, vec in enumerate(vectors)
        ]  # fmt: skip
        body = {
            "object": "list",
            "data": data,
            "model": MODEL,
            "usage": {"prompt_tokens": n * 30, "total_tokens": n * 30},
        }
        request = {
            "model": MODEL,
            "input": texts,
            "encoding_format": "float" if floats else "base64",
        }
        out.append(make_exchange("embeddings", request_body=orjson.dumps(request),
                                 response_body=orjson.dumps(body, option=orjson.OPT_INDENT_2),
                                 started=started + first / 1000, model=MODEL))  # fmt: skip
    return out


def storage_cost(dim: int) -> dict[str, Any]:
    """Bytes in the log per 1,000 embeddings, by wire format and with the switch off."""
    out: dict[str, Any] = {}
    for floats in (False, True):
        exs = calls(1000, dim, floats=floats)
        wire = sum(len(ex.response_body) for ex in exs)
        kept = sum(len(pack_exchange(ex)) for ex in exs)
        off = sum(len(pack_exchange(ex, embeddings=False)) for ex in exs)
        name = "float" if floats else "base64"
        out[name] = {"wire_kb": round(wire / 1024), "stored_kb": round(kept / 1024),
                     "stored_off_kb": round(off / 1024)}  # fmt: skip
    return out


def build(store_path: Path, points: int, dim: int) -> dict[str, Any]:
    store = LmdbStore(store_path)
    log = ExchangeLog(store, retention_s=None)
    for ex in calls(points, dim, floats=False):
        log.append(ex)
    log.flush()
    indexed = index_seconds(store_path, store, log)
    store.close()
    return {"index_s": round(indexed, 1)}


def projection(api: httpx.Client, dim: int, method: str) -> float:
    params = {"model": MODEL, "dim": dim, "method": method}
    started = time.perf_counter()
    deadline = started + 1800
    while time.perf_counter() < deadline:
        reply = api.get("/api/embeddings/projection", params=params)
        if reply.status_code == 200:
            return time.perf_counter() - started
        time.sleep(0.1)  # polling the worker, as the page does
    raise RuntimeError("the projection did not finish in 30 minutes")


def render(url: str, runs: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    times: list[int] = []
    fetched: list[int] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        # A freshly launched browser's first page pays for starting its renderer; users' is warm.
        page.goto(url.split("/embeddings")[0] + "/threads")
        for _ in range(runs):
            page.goto(url)
            page.wait_for_selector("body[data-emb-state=ready]", timeout=120_000)
            times.append(int(page.evaluate("() => document.body.dataset.embRenderMs")))
            fetched.append(page.evaluate(
                "() => Math.round(performance.getEntriesByType('resource')"
                ".filter(e => e.name.includes('/api/embeddings/projection'))"
                ".map(e => e.responseEnd).pop() || 0)"))  # fmt: skip
        page.screenshot(path=str(Path(tempfile.gettempdir()) / "embbench.png"))
        browser.close()
    return {"render_ms": times, "render_ms_median": statistics.median(times),
            "render_ms_max": max(times), "points_fetched_ms": fetched, "runs": runs}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--umap", action="store_true", help="also time UMAP (needs llmreel[umap])")
    args = parser.parse_args()
    results: dict[str, Any] = {"points": args.points, "dim": args.dim,
                               "per_1000_embeddings": storage_cost(args.dim)}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="llmreel-embbench-") as tmp:
        store = Path(tmp) / "store"
        results.update(build(store, args.points, args.dim))
        ui = UiProcess(store=str(store), port=0)
        ui.start()
        try:
            base = ui.url.rstrip("/")
            api = httpx.Client(base_url=base, timeout=120)
            results["pca_s"] = round(projection(api, args.dim, "pca"), 2)
            payload = api.get(
                "/api/embeddings/projection",
                params={"model": MODEL, "dim": args.dim, "method": "pca"},
            )
            results["projection_payload_kb"] = round(len(payload.content) / 1024)
            point = orjson.loads(payload.content)["points"][123]
            started = time.perf_counter()
            api.get(
                "/api/embeddings/neighbours", params={"point": point, "k": 10}
            ).raise_for_status()
            results["neighbours_ms"] = round((time.perf_counter() - started) * 1000, 1)
            results.update(
                render(f"{base}/embeddings?model={MODEL}&dim={args.dim}&method=pca", args.runs)
            )
            if args.umap:
                results["umap_s"] = round(projection(api, args.dim, "umap"), 1)
        finally:
            ui.stop()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
