"""The embeddings explorer end to end, in a real browser: a RAG agent (OpenAI SDK, whose embedding
calls ask for base64 vectors by default) goes through a real proxy to the fake upstream, and the
page shows its points, a clicked point's neighbours, and the chunks its chat prompt retrieved.
The screenshots in docs/ui/ are taken here (see tests/test_ui_browser.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.conftest import http_client, wait_until
from tests.fakeupstream import FakeUpstream
from tests.test_e2e import openai_client
from tests.test_ui_browser import DOCS, MakeProxy, browser, pytestmark, ui_process

__all__ = ["browser", "pytestmark"]

CHUNKS = [
    "Refunds are accepted within 30 days of purchase with a receipt.",
    "Shipping to Europe takes five to seven business days.",
    "Gift cards cannot be exchanged for cash.",
    "Our support line is open from 9am to 5pm on weekdays.",
    "Damaged items are replaced free of charge.",
    "Orders over 50 euros ship for free.",
]
QUERY = "Can I get my money back after three weeks?"


def rag_agent(client: Any) -> str:
    """Index the chunks, embed the question, ask with the two best chunks; the chat's id."""
    client.embeddings.create(model="text-embedding-3-small", input=CHUNKS)  # base64 by default
    client.embeddings.create(model="text-embedding-3-small", input=QUERY)
    # Another space: fewer dimensions, float lists on the wire. Kept apart from the first.
    client.embeddings.create(model="text-embedding-3-small", input=CHUNKS[:3], dimensions=256,
                             encoding_format="float")  # fmt: skip
    context = "\n\n".join(CHUNKS[i] for i in (0, 4))
    reply = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[
        {"role": "system", "content": "Answer from the context only."},
        {"role": "user", "content": f"Context:\n{context}\n\nQuestion: {QUERY}"},
    ])  # fmt: skip
    return str(reply.parse().id)


def test_embeddings_page_shows_points_neighbours_and_retrieved_chunks(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str, browser: Any, tmp_path: Path
) -> None:
    proxy = make_proxy()
    rag_agent(openai_client(proxy, fake, bundle))
    with http_client(proxy, bundle) as gemini:
        reply = gemini.post(f"{fake.url}/v1beta/models/gemini-embedding-001:batchEmbedContents",
                            json={"requests": [{"model": "models/gemini-embedding-001",
                                                "content": {"parts": [{"text": t}]}}
                                               for t in CHUNKS[:2]]})  # fmt: skip
        assert reply.status_code == 200
    ui = ui_process(proxy.settings.store)
    base = ui.url.rstrip("/")
    try:
        api = httpx.Client(base_url=base, timeout=30)
        spaces = wait_until(lambda: len(api.get("/api/embeddings/spaces").json()) == 3 and
                            api.get("/api/embeddings/spaces").json(), "three spaces indexed")  # fmt: skip
        assert {(s["model"], s["dim"], s["count"]) for s in spaces} == {
            ("text-embedding-3-small", 1536, 7), ("text-embedding-3-small", 256, 3),
            ("gemini-embedding-001", 3072, 2)}  # fmt: skip
        chat = api.get("/api/exchanges", params={"q": "Question"}).json()["items"]
        chat_id = next(e["id"] for e in chat if e["operation"] == "chat")

        page = browser.new_page(viewport={"width": 1400, "height": 860})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{base}/embeddings?model=text-embedding-3-small&dim=1536&method=pca")
        page.wait_for_selector("body[data-emb-state=ready]", timeout=60_000)
        assert "7 points" in page.inner_text("#emb-status")
        positions = page.evaluate("() => window.llmreelEmbeddings.positions()")
        assert len(positions) == 7
        texts = set(CHUNKS) | {QUERY}

        # Hover shows the point's text; clicking shows its neighbours with cosine scores.
        point, x, y = positions[0]
        page.mouse.move(x + page.locator("#emb-canvas").bounding_box()["x"],
                        y + page.locator("#emb-canvas").bounding_box()["y"])  # fmt: skip
        tip = page.locator("#emb-tip")
        tip.wait_for(state="visible")
        assert tip.inner_text() in texts
        page.mouse.down()
        page.mouse.up()
        page.wait_for_selector("body[data-emb-neighbours='6']")
        items = page.locator("ol.emb-nb li")
        assert items.count() == 6
        scores = [float(s) for s in page.locator("ol.emb-nb .score").all_inner_texts()]
        assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
        shown = {t for t in page.locator("ol.emb-nb .text").all_inner_texts()}
        assert shown <= texts and len(shown) == 6
        api_nb = api.get("/api/embeddings/neighbours", params={"point": point, "k": 3}).json()
        assert [round(n["score"], 4) for n in api_nb["neighbours"]] == [
            round(s, 4) for s in scores[:3]
        ]
        DOCS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS / "embeddings.png"))

        # RAG: from the chat exchange's page, the two chunks and the query light up.
        page.goto(f"{base}/exchanges/{chat_id}")
        page.click("text=retrieved chunks in embeddings")
        page.wait_for_selector("body[data-emb-state=ready]", timeout=60_000)
        lit = page.evaluate("() => window.llmreelEmbeddings.rag()")
        by_id = {d["point"]: d["text"] for d in
                 api.get("/api/embeddings/neighbours", params={"point": point, "k": 10}).json()["neighbours"]}  # fmt: skip
        by_id[point] = api_nb["point"]["text"]
        assert sorted((by_id[int(p)], kind) for p, kind in lit.items()) == sorted(
            [(CHUNKS[0], "chunk"), (CHUNKS[4], "chunk"), (QUERY, "query")])  # fmt: skip
        assert "3 point(s) in this space" in page.inner_text("#emb-rag")
        page.screenshot(path=str(DOCS / "embeddings-rag.png"))

        # The other spaces are there to pick, each drawn on its own.
        page.goto(f"{base}/embeddings?model=gemini-embedding-001&dim=3072&method=pca")
        page.wait_for_selector("body[data-emb-state=ready]", timeout=60_000)
        assert "2 points" in page.inner_text("#emb-status")
        assert errors == []
    finally:
        ui.stop()
