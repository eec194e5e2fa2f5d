"""--budget-usd through a real proxy: a runaway loop stops costing money, hits keep working."""

from __future__ import annotations

from collections.abc import Callable

import anthropic
import openai
import pytest

from tests.conftest import ProxyThread
from tests.fakeupstream import FakeUpstream
from tests.test_e2e import anthropic_client, openai_client


@pytest.fixture(params=[1, 2], ids=["1-worker", "2-workers"])
def proxy_workers(request: pytest.FixtureRequest) -> int:
    """The budget holds for the whole proxy, however many worker processes serve it."""
    return int(request.param)


def test_the_budget_refuses_further_calls_once_spent(
    make_proxy: Callable[..., ProxyThread], fake: FakeUpstream, bundle: str
) -> None:
    proxy = make_proxy(budget_usd="0.0000001")  # less than any one call costs
    client = openai_client(proxy, fake, bundle, max_retries=3)
    ask = lambda n: client.chat.completions.create(  # noqa: E731
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"loop step {n}"}]
    )
    ask(0)  # spent $0 so far: allowed, and now over the budget
    for n in range(1, 4):
        with pytest.raises(openai.APIStatusError) as caught:
            ask(n)
        assert caught.value.status_code == 402
        assert "budget" in caught.value.message and "--budget-usd" in caught.value.message
    assert len(fake.requests) == 1  # one call billed; the refused ones never left, never retried
    assert ask(0).choices  # a recorded call is still replayed
    claude = anthropic_client(proxy, fake, bundle, max_retries=3)
    with pytest.raises(anthropic.APIStatusError) as refused:
        claude.messages.create(model="claude-sonnet-4-20250514", max_tokens=16,
                               messages=[{"role": "user", "content": "one more"}])  # fmt: skip
    assert refused.value.status_code == 402 and len(fake.requests) == 1
    registry = proxy.registry
    assert registry.get_sample_value("llmreel_budget_refusals_total") == 4
    spent = registry.get_sample_value("llmreel_spend_usd")
    assert spent is not None and spent > 0.0000001
    assert f"${spent:.4f}" in refused.value.message
