"""The embeddings explorer's pure parts: texts and vectors from both providers (base64 and float
lists), the log's compact float32 form and its off switch, PCA, cosine neighbours, chunk matching,
and the UI's index of embedded points."""

from __future__ import annotations

import base64
import struct
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from llmreel.core.redact import scrub_text
from llmreel.log.packing import pack_exchange, unpack_record
from llmreel.log.vectors import pack_vectors
from llmreel.providers import classify, conversation, request_model
from llmreel.providers.embeddings import (
    DROPPED,
    PACKED,
    compact_response,
    embedded,
    expand_response,
    request_texts,
    response_vectors,
)
from llmreel.providers.hosts import GEMINI_EMBED, OPENAI_EMBEDDINGS
from llmreel.ui import embindex
from llmreel.ui.projection import cosine_neighbours, pca_2d, project, unit_rows
from llmreel.ui.rag import Candidate, match, normalise, prompt_texts
from tests.test_exchangelog import GOOGLE_KEY, fixture, make_exchange


def f32(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def scrub(body: bytes) -> bytes:
    return scrub_text(body.decode()).encode()


# --- texts and vectors ----------------------------------------------------------------------------


def test_openai_texts_in_every_input_shape() -> None:
    assert request_texts(OPENAI_EMBEDDINGS, {"input": "one"}) == ["one"]
    assert request_texts(OPENAI_EMBEDDINGS, {"input": ["a", "b"]}) == ["a", "b"]
    assert request_texts(OPENAI_EMBEDDINGS, {"input": [1, 2, 3]}) == [None]  # one tokenised input
    assert request_texts(OPENAI_EMBEDDINGS, {"input": [[1, 2], [3]]}) == [None, None]
    assert request_texts(OPENAI_EMBEDDINGS, {}) == []


def test_gemini_texts_single_and_batch() -> None:
    one = {
        "content": {"parts": [{"text": "Hello"}, {"text": "world"}]},
        "taskType": "RETRIEVAL_QUERY",
    }
    assert request_texts(GEMINI_EMBED, one) == ["Hello\nworld"]
    batch = {"requests": [{"model": "models/m", "content": {"parts": [{"text": t}]}} for t in "xy"]}
    assert request_texts(GEMINI_EMBED, batch) == ["x", "y"]


def test_openai_base64_vectors_from_the_real_fixture() -> None:
    body = orjson.loads(fixture("openai-embeddings.json"))
    (vector,) = response_vectors(OPENAI_EMBEDDINGS, body)
    assert vector is not None and len(vector) == 1536 * 4  # ada-002: 1536 float32
    values = np.frombuffer(vector, dtype="<f4")
    assert abs(float(np.linalg.norm(values)) - 1.0) < 1e-3  # OpenAI vectors are unit length


def test_float_lists_and_base64_give_the_same_bytes_in_input_order() -> None:
    a, b = [0.5, -0.25, 0.125], [1.0, 2.0, 3.0]
    floats = {"data": [{"index": 1, "embedding": b}, {"index": 0, "embedding": a}]}
    b64 = {
        "data": [
            {"index": i, "embedding": base64.b64encode(f32(v)).decode()}
            for i, v in enumerate((a, b))
        ]
    }
    assert response_vectors(OPENAI_EMBEDDINGS, floats) == [f32(a), f32(b)]
    assert response_vectors(OPENAI_EMBEDDINGS, b64) == [f32(a), f32(b)]
    gemini = {"embeddings": [{"values": a}, {"values": b}]}
    assert response_vectors(GEMINI_EMBED, gemini) == [f32(a), f32(b)]
    assert response_vectors(GEMINI_EMBED, {"embedding": {"values": a}}) == [f32(a)]


def test_unreadable_vectors_are_skipped_not_raised() -> None:
    body = {"data": [{"index": 0, "embedding": "not base64!"}, {"index": 1, "embedding": ["x"]},
                     {"index": 2, "embedding": [1.0]}]}  # fmt: skip
    items = embedded(OPENAI_EMBEDDINGS, {"input": ["a", "b", "c"]}, body)
    assert [(e.index, e.text, e.dim) for e in items] == [(2, "c", 1)]


def test_gemini_embed_is_classified_with_its_model() -> None:
    path = "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    ep = classify("POST", "generativelanguage.googleapis.com", path)
    assert ep is not None and ep.api == GEMINI_EMBED and ep.operation == "embeddings"
    assert request_model(ep, path, {"requests": []}) == "gemini-embedding-001"
    assert classify("POST", "llm.internal:8080", "/v1beta/models/m:embedContent") is not None


# --- the log's compact form -----------------------------------------------------------------------


def test_float_lists_are_kept_as_float32_and_read_back_as_sent() -> None:
    values = np.random.default_rng(1).standard_normal(8).astype("<f4")
    for sent in ([float(f"{v:.9g}") for v in values], [float(str(v)) for v in values]):
        doc: dict[str, Any] = {"embedding": {"values": list(sent)}}
        assert compact_response(GEMINI_EMBED, doc) == PACKED
        assert isinstance(doc["embedding"]["values"], str)
        expand_response(GEMINI_EMBED, doc)
        back = doc["embedding"]["values"]
        assert np.array_equal(np.array(back, dtype="<f4"), values)  # the same float32 values
    assert back == sent  # printed as the shortest decimal of each float32, like the providers


def test_base64_responses_are_stored_byte_for_byte() -> None:
    body = fixture("openai-embeddings.json")
    stored, kept = pack_vectors(OPENAI_EMBEDDINGS, body, keep=True, scrub=scrub, limit=1 << 30)
    assert stored == body and kept is None


def test_the_off_switch_stores_no_vector() -> None:
    body = fixture("openai-embeddings.json")
    stored, kept = pack_vectors(OPENAI_EMBEDDINGS, body, keep=False, scrub=scrub, limit=1 << 30)
    assert kept == DROPPED
    doc = orjson.loads(stored)
    assert doc["data"][0]["embedding"] is None and doc["usage"]["prompt_tokens"] == 8
    assert len(stored) < 400


def test_a_key_shape_inside_a_vector_does_not_cut_it_but_keys_elsewhere_are_masked() -> None:
    # 24 bytes whose base64 holds "AIza…": a vector, not a key, and it must survive.
    raw = base64.b64decode("AIza" + "B" * 28)
    doc = {"data": [{"index": 0, "embedding": base64.b64encode(raw).decode()}],
           "model": f"leaked {GOOGLE_KEY}"}  # fmt: skip
    stored, _ = pack_vectors(
        OPENAI_EMBEDDINGS, orjson.dumps(doc), keep=True, scrub=scrub, limit=1 << 30
    )
    assert GOOGLE_KEY.encode() not in stored
    assert response_vectors(OPENAI_EMBEDDINGS, orjson.loads(stored)) == [raw]


def test_a_logged_float_response_costs_float32_and_reads_back_as_floats() -> None:
    vectors = unit_rows(np.random.default_rng(2).standard_normal((20, 1536)).astype("<f4"))
    data = [{"object": "embedding", "index": i, "embedding": [float(str(v)) for v in row]}
            for i, row in enumerate(vectors)]  # fmt: skip
    body = orjson.dumps({"object": "list", "data": data, "model": "text-embedding-3-small"})
    request = {"model": "text-embedding-3-small", "input": [f"text {i}" for i in range(20)]}
    ex = make_exchange("embeddings", request_body=orjson.dumps(request), response_body=body)
    kept, dropped = pack_exchange(ex), pack_exchange(ex, embeddings=False)
    assert len(kept) < 20 * 1536 * 4 * 1.1  # ~6 KB a vector, not the ~20 KB of JSON floats
    assert len(dropped) < 4000
    record = unpack_record(kept)
    assert [d["embedding"] for d in record["response_body"]["data"]] == [
        d["embedding"] for d in data
    ]
    packed = unpack_record(kept, vectors=False)
    assert isinstance(packed["response_body"]["data"][0]["embedding"], str)
    assert "20 embeddings (1536 dimensions)" in conversation(record).response.parts[0].text  # type: ignore[union-attr]
    off = unpack_record(dropped)
    assert "vectors not logged" in conversation(off).response.parts[0].text  # type: ignore[union-attr]


# --- vector maths ---------------------------------------------------------------------------------


def clusters() -> np.ndarray:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((50, 64)) * 0.1 + 3.0
    b = rng.standard_normal((50, 64)) * 0.1 - 3.0
    return np.vstack([a, b]).astype(np.float32)


def test_pca_has_one_row_per_point_and_is_deterministic() -> None:
    x = clusters()
    xy = pca_2d(x)
    assert xy.shape == (100, 2) and xy.dtype == np.float32
    assert np.array_equal(xy, pca_2d(x.copy()))
    # The first axis separates the two clusters.
    assert (np.sign(xy[:50, 0]) != np.sign(xy[50:, 0])).all()
    assert pca_2d(x[:1]).shape == (1, 2) and pca_2d(x[:, :1]).shape == (100, 2)


def test_too_few_points_for_umap_are_projected_by_pca() -> None:
    x = clusters()[:10]
    xy, method = project(x, "umap")
    assert method == "pca" and np.array_equal(xy, pca_2d(x))


def test_cosine_neighbours_best_first_with_scores() -> None:
    unit = unit_rows(np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]], dtype=np.float32))
    found = cosine_neighbours(unit, 0, 2)
    assert [j for j, _ in found] == [1, 2]
    assert found[0][1] == pytest.approx(0.9 / np.hypot(0.9, 0.1))
    assert found[1][1] == pytest.approx(0.0, abs=1e-6)
    assert [j for j, _ in cosine_neighbours(unit, 3, 10)] == [2, 1, 0]  # k capped, self excluded


# --- RAG chunk matching ---------------------------------------------------------------------------


def test_chunks_and_query_found_in_a_prompt_with_whitespace_normalised() -> None:
    chunk = "Refunds are accepted\nwithin 30 days of purchase."
    query = "Can I get a refund after three weeks?"
    prompt = normalise(
        f"Context:\n  Refunds are accepted within   30 days of purchase.\n\nQuestion: {query}"
    )
    candidates = [
        Candidate(1, normalise(chunk), 100.0, 3),  # indexed in a batch, long ago
        Candidate(2, normalise("Shipping takes five business days."), 100.0, 3),
        Candidate(3, normalise(query), 199.0, 1),  # the question, embedded just before asking
        Candidate(4, normalise(query), 150.0, 1),  # the same question asked earlier: same text
        Candidate(5, "short", 100.0, 1),  # too short to mean anything
    ]
    kinds = match(prompt, normalise(f"Question: {query}"), candidates, before_unix=200.0)
    assert kinds == {1: "chunk", 3: "query", 4: "query"}
    # Embedded after the chat exchange, the question cannot be its query.
    assert match(prompt, normalise(query), candidates[2:3], before_unix=198.0) == {3: "chunk"}


def test_prompt_texts_read_system_messages_and_the_last_user_turn() -> None:
    record = {"api": "openai.chat", "request_body": {"messages": [
        {"role": "system", "content": "Answer from   the context."},
        {"role": "user", "content": "first"},
        {"role": "user", "content": [{"type": "text", "text": "second\nquestion"}]},
    ]}}  # fmt: skip
    prompt, last = prompt_texts(conversation(record))
    assert prompt == "Answer from the context. first second question" and last == "second question"


# --- the index ------------------------------------------------------------------------------------


def test_index_rows_keep_models_and_dimensions_apart(tmp_path: Path) -> None:
    import sqlite3

    conn = sqlite3.connect(tmp_path / "i.sqlite3")
    conn.executescript(embindex.DDL)
    for model, dims in (("small", 4), ("small", 2), ("large", 4)):
        record = {"id": f"01J{model}{dims}", "api": OPENAI_EMBEDDINGS, "model": model,
                  "time": "2025-01-01T00:00:00.000Z", "namespace": "ns",
                  "request_body": {"input": ["a", "b"]},
                  "response_body": {"data": [{"index": i, "embedding": [1.0] * dims} for i in range(2)]}}  # fmt: skip
        assert embindex.add(conn, 1, record) == 2
    assert (
        embindex.add(conn, 1, {"api": "openai.chat", "request_body": {}, "response_body": {}}) == 0
    )
    spaces = conn.execute(
        "SELECT model, dim, count(*) FROM emb GROUP BY 1, 2 ORDER BY 1, 2"
    ).fetchall()
    assert spaces == [("large", 4, 2), ("small", 2, 2), ("small", 4, 2)]


# --- end to end: the switch -----------------------------------------------------------------------


def test_no_log_embeddings_keeps_texts_but_no_vector(
    make_proxy: Any, fake: Any, bundle: str, tmp_path: Path
) -> None:
    from tests.conftest import wait_until
    from tests.test_e2e import openai_client
    from tests.test_ui_browser import ui_process

    stores = {}
    for keep in (True, False):
        proxy = make_proxy(store=str(tmp_path / f"store-{keep}"), log_embeddings=keep)
        client = openai_client(proxy, fake, bundle)
        client.embeddings.create(model="text-embedding-3-small", input=["alpha beta", "gamma"],
                                 encoding_format="float", dimensions=8)  # fmt: skip
        stores[keep] = proxy.settings.store
        proxy.stop()
    for keep, store in stores.items():
        ui = ui_process(store)
        try:
            api = httpx.Client(base_url=ui.url.rstrip("/"), timeout=30)
            (item,) = wait_until(lambda c=api: c.get("/api/exchanges").json()["items"], "indexed")
            body = api.get(f"/api/exchanges/{item['id']}").json()["response_body"]
            vectors = [d["embedding"] for d in body["data"]]
            spaces = api.get("/api/embeddings/spaces").json()
            if keep:
                assert all(isinstance(v, list) and len(v) == 8 for v in vectors)
                assert spaces == [{"model": "text-embedding-3-small", "dim": 8, "count": 2}]
            else:
                assert vectors == [None, None] and spaces == []
                assert "No embedding calls" in api.get("/embeddings").text
            request = api.get(f"/api/exchanges/{item['id']}").json()["request_body"]
            assert request["input"] == ["alpha beta", "gamma"]  # texts are kept either way
        finally:
            ui.stop()


def test_projection_runs_in_the_worker_and_a_stale_one_is_served_while_points_arrive(
    tmp_path: Path,
) -> None:
    import sqlite3

    from llmreel.ui.embeddings import Explorer

    path = tmp_path / "index.sqlite3"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(path, check_same_thread=False)

    conn = connect()
    conn.executescript(embindex.DDL)
    rng = np.random.default_rng(5)

    def log_call(ident: str, n: int) -> None:
        data = [
            {"index": i, "embedding": v.tolist()} for i, v in enumerate(rng.standard_normal((n, 8)))
        ]
        record = {"id": ident, "api": OPENAI_EMBEDDINGS, "model": "m", "time": "2025-01-01T00:00:00.000Z",
                  "request_body": {"input": [f"text {ident} {i}" for i in range(n)]},
                  "response_body": {"data": data}}  # fmt: skip
        embindex.add(conn, 1, record)
        conn.commit()

    log_call("A", 30)
    explorer = Explorer(connect, None)  # type: ignore[arg-type] # no log: no RAG here
    key = ("m", 8)
    try:
        assert explorer.projection(conn, key, "pca")["state"] in ("computing", "ready")
        explorer.wait(conn, key, "pca", 60)
        ready = explorer.projection(conn, key, "pca")
        assert ready["state"] == "ready" and ready["count"] == 30 and "stale" not in ready
        assert len(base64.b64decode(ready["xy"])) == 30 * 2 * 4
        assert ready["text"][0] == "text A 0" and ready["categories"]["call"]["values"] == ["A"]

        log_call("B", 10)
        meanwhile = explorer.projection(conn, key, "pca")
        assert meanwhile["count"] in (30, 40)
        assert meanwhile.get("stale", False) == (meanwhile["count"] == 30)
        explorer.wait(conn, key, "pca", 60)
        fresh = explorer.projection(conn, key, "pca")
        assert fresh["count"] == 40 and "stale" not in fresh
        assert fresh["categories"]["call"]["values"] == ["A", "B"]

        near = explorer.neighbours(conn, fresh["points"][0], 5)
        scores = [n["score"] for n in near["neighbours"]]
        assert len(scores) == 5 and scores == sorted(scores, reverse=True)
        assert near["point"]["text"] == "text A 0"
        with pytest.raises(ValueError, match="method"):
            explorer.projection(conn, key, "tsne")
    finally:
        explorer.close()


def test_the_cli_switch_reaches_the_proxy_settings() -> None:
    from dataclasses import fields

    from llmreel.cli.main import main
    from llmreel.cli.server import ProxySettings
    from llmreel.engine.options import DEFAULTS

    serve = main.commands["serve"]  # type: ignore[attr-defined]
    for args, expected in (
        ([], True),
        (["--no-log-embeddings"], False),
        (["--log-embeddings"], True),
    ):
        ctx = serve.make_context("serve", list(args))
        assert ctx.params["log_embeddings"] is expected
    assert "log_embeddings" in {f.name for f in fields(ProxySettings)}
    assert DEFAULTS["llmreel_log_embeddings"] is True


def test_the_proxy_does_not_load_numpy() -> None:
    # numpy is for the UI's reading side; the proxy packs vectors with the standard library.
    import subprocess
    import sys

    code = "import sys, llmreel.addons.recorder, llmreel.log.packing; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
