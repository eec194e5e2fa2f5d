"""The playground in a real browser (Debian's chromium driven by Playwright): open a logged exchange
in the playground, edit the prompt, send, and see both answers side by side; then Run ×5 and see
the answers grouped. The screenshots in docs/ui/ are taken here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.fakeupstream import FakeUpstream
from tests.test_playground import TYPED, exchange, no_env_keys, start_ui
from tests.test_ui_browser import DOCS, browser, pytestmark

__all__ = ["browser", "exchange", "no_env_keys", "pytestmark"]


def box(page: Any, selector: str) -> dict[str, float]:
    found = page.locator(selector).bounding_box()
    assert found is not None, f"{selector} is not shown"
    return dict(found)


@pytest.mark.usefixtures("no_env_keys")
def test_edit_send_compare_and_run_five_times(
    exchange: dict[str, Any], fake: FakeUpstream, confdir: Path, browser: Any
) -> None:
    ui = start_ui(exchange, confdir)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        page.goto(f"{ui.process.url}exchanges/{exchange['id']}")
        page.click("#open-playground")
        page.wait_for_selector("#pg-cols")
        assert "Capital of Peru?" in page.input_value(".pg-variant .pg-user")
        assert "Echo: Capital of Peru?" in page.inner_text("#pg-original-answer")

        # No key in the environment: typed in the page, it stays in the page's memory.
        page.fill("#pg-key", TYPED)
        page.fill(".pg-variant .pg-user", "Capital of Chile?")
        page.click("#pg-add")  # a second variant, side by side, with another prompt
        page.locator(".pg-variant").nth(1).locator(".pg-user").fill("Capital of Bolivia, please?")
        page.click("#pg-send")
        page.wait_for_selector(".pg-variant[data-done] ~ .pg-variant[data-done]", timeout=60_000)
        first, second = page.locator(".pg-variant .pg-result").all_inner_texts()
        assert "Chile" in first and "Bolivia" in second
        # Side by side: the original and both variants on one row, left to right.
        original, one, two = (
            box(page, "#pg-original"),
            box(page, ".pg-variant >> nth=0"),
            box(page, ".pg-variant >> nth=1"),
        )
        assert original["x"] < one["x"] < two["x"] and abs(original["y"] - one["y"]) < 5
        # The differences from the original are marked.
        assert (
            page.locator(".pg-variant >> nth=0").locator("del.pg-del").first.inner_text() == "Peru"
        )
        assert (
            page.locator(".pg-variant >> nth=0").locator("ins.pg-ins").first.inner_text() == "Chile"
        )
        assert "bypass" in page.inner_text(".pg-variant >> nth=0 >> .pg-meta")
        sent = [json.loads(r.body)["messages"][-1]["content"] for r in fake.requests]
        assert sorted(sent) == ["Capital of Bolivia, please?", "Capital of Chile?"]
        assert all(r.header("authorization") == f"Bearer {TYPED}" for r in fake.requests)
        DOCS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS / "playground.png"), full_page=True)

        # Run ×5 against a model that answers in two ways: two groups, 3 and 2.
        fake.reset()
        fake.vary = 2
        page.locator(".pg-variant >> nth=1").locator(".pg-remove").click()
        page.check(".probe-perturb[value=temperature]")  # the fake ignores it
        page.click("#probe-run")
        page.wait_for_selector(".pg-verdict", timeout=60_000)
        assert page.inner_text(".pg-verdict").startswith("Unstable")
        titles = page.locator(".pg-group h3").all_inner_texts()
        assert [t.split()[:2] for t in titles] == [["#1", "×3"], ["#2", "×2"]]
        assert "2 distinct answer(s) in 5" in page.inner_text(".pg-figures")
        assert page.locator(".pg-group >> nth=1").locator("ins.pg-ins").count() >= 1
        assert len(fake.requests) == 5
        page.locator("#probe").screenshot(path=str(DOCS / "playground-probe.png"))

        # Nothing of the key in the browser's storage either.
        stored = page.evaluate(
            "() => JSON.stringify([localStorage, sessionStorage, document.cookie])"
        )
        assert TYPED not in stored and TYPED not in json.dumps(page.context.cookies())
        assert TYPED not in page.content()  # an input's value is a property, not in the markup
        assert errors == []
    finally:
        ui.process.stop()
