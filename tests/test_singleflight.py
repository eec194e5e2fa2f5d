"""Single flight through a real proxy: identical concurrent misses are billed once.

Raw httpx clients, as a user reproduces it: ten identical requests sent at once, for plain
JSON, streams and `--explain-misses`. The fake upstream counts what reaches it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.conftest import ProxyThread, http_client
from tests.fakeupstream import FakeUpstream

CHAT_PATH = "/v1/chat/completions"
CLIENTS = 10


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("explain", [False, True], ids=["plain", "explain-misses"])
def test_identical_concurrent_misses_reach_the_upstream_once(
    make_proxy: Callable[..., ProxyThread],
    fake: FakeUpstream,
    bundle: str,
    stream: bool,
    explain: bool,
) -> None:
    proxy = make_proxy(explain_misses=explain)
    # A recording in the namespace gives --explain-misses something to compare with.
    with http_client(proxy, bundle) as client:
        client.post(
            f"{fake.url}{CHAT_PATH}", json=_chat("an earlier prompt", stream)
        ).raise_for_status()
    fake.reset()
    barrier = threading.Barrier(CLIENTS)

    def call(_: int) -> tuple[str, bytes]:
        with http_client(proxy, bundle) as client:
            barrier.wait(10)
            # The upstream pauses so that all ten overlap the leader's call.
            reply = client.post(f"{fake.url}{CHAT_PATH}", json=_chat("the same prompt", stream),
                                headers={"x-fake-delay-ms": "400"})  # fmt: skip
            reply.raise_for_status()
            return reply.headers["llmreel-cache"], reply.content

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(call, range(CLIENTS)))
    reached = [r for r in fake.requests if r.path == CHAT_PATH]
    assert len(reached) == 1, f"{len(reached)} upstream calls for {CLIENTS} identical requests"
    assert sorted(outcome for outcome, _ in results) == ["hit"] * (CLIENTS - 1) + ["miss"]
    bodies = {body for _, body in results}
    assert len(bodies) == 1  # every client got the leader's answer, byte for byte


def _chat(prompt: str, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": prompt}],
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body
