"""--replay-pace: replayed streams keep (or scale) their recorded gaps, through a real proxy."""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest

from llmreel.core.pacing import parse_pace, schedule
from tests.conftest import ProxyThread, http_client
from tests.fakeupstream import FakeUpstream

CHAT_PATH = "/v1/chat/completions"
PAUSE_MS = 120


def _stream(proxy: ProxyThread, fake: FakeUpstream, bundle: str, **headers: str) -> tuple[str, list[float]]:
    """The cache outcome, and the times (from sending) at which each SSE event arrived."""
    body: dict[str, Any] = {"model": "gpt-4o-mini", "stream": True,
                            "messages": [{"role": "user", "content": "count slowly to five"}]}  # fmt: skip
    arrivals: list[float] = []
    with http_client(proxy, bundle) as client:
        start = time.monotonic()
        with client.stream("POST", f"{fake.url}{CHAT_PATH}", json=body, headers=headers) as reply:
            buffer = b""
            for chunk in reply.iter_raw():
                buffer += chunk
                while b"\n\n" in buffer:
                    _, buffer = buffer.split(b"\n\n", 1)
                    arrivals.append(time.monotonic() - start)
            return reply.headers["llmreel-cache"], arrivals


def _gaps(arrivals: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(arrivals)]


@pytest.mark.parametrize("pace, factor", [("original", 1.0), ("0.5", 0.5)])
def test_a_paced_replay_keeps_the_recorded_gaps(
    make_proxy: Callable[..., ProxyThread], fake: FakeUpstream, bundle: str, pace: str, factor: float
) -> None:
    recorder = make_proxy()
    outcome, recorded = _stream(recorder, fake, bundle, **{"x-fake-delay-ms": str(PAUSE_MS)})
    assert outcome == "miss"
    recorder.stop()
    fast = make_proxy(mode="offline")
    outcome, fast_arrivals = _stream(fast, fake, bundle)
    assert outcome == "hit"
    fast.stop()
    paced = make_proxy(mode="offline", replay_pace=pace)  # offline: the pacer is on loopback
    outcome, paced_arrivals = _stream(paced, fake, bundle)
    assert outcome == "hit"
    assert len(paced_arrivals) == len(recorded) > 3
    recorded_gap = statistics.median(_gaps(recorded))
    paced_gap = statistics.median(_gaps(paced_arrivals))
    # Wide margins: the machine is shared. Fast replays arrive in one go; paced ones keep time.
    assert statistics.median(_gaps(fast_arrivals)) < 0.25 * recorded_gap
    assert 0.6 * factor * recorded_gap < paced_gap < 1.6 * factor * recorded_gap
    assert len(fake.requests) == 1  # only the recording run reached the upstream


def test_pace_values_and_schedule() -> None:
    assert parse_pace("fast") is None and parse_pace("original") == 1.0 and parse_pace("2x") == 2.0
    with pytest.raises(ValueError, match="not fast, original or a factor"):
        parse_pace("slowly")
    body = b"aaabbbbcc"
    assert list(schedule(body, [(0.1, 3), (0.3, 4), (0.5, 2)], 2.0)) == [
        (0.2, b"aaa"), (0.6, b"bbbb"), (1.0, b"cc"),
    ]  # fmt: skip
    assert list(schedule(body, [(0.1, 3), (0.4, 3)], 1.0)) == [(0.4, body)]  # sizes disagree
