"""The engine without mitmproxy: single flight, behaviour read from the body as sent, and
recordings that must not be made (a damaged or oversized copy)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from llmreel.core.errors import ErrorReply
from llmreel.core.singleflight import SingleFlight
from llmreel.engine import DEFAULTS, Engine, FlowState, RequestHead, ResponseInfo
from llmreel.storage.records import Recording

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}
CHAT_RESPONSE = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hi!"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
}
SSE = (
    b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,'
    b'"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
    b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,'
    b'"delta":{},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)
JSON_HEADERS = [("content-type", "application/json")]
SSE_HEADERS = [("content-type", "text/event-stream")]


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    eng = Engine(registry=CollectorRegistry())
    eng.configure({"llmreel_store": str(tmp_path / "store")}, DEFAULTS.keys())
    yield eng
    eng.close()


def head(body: Any = CHAT, **controls: str) -> RequestHead:
    raw = json.dumps(body).encode()
    return RequestHead(
        method="POST", scheme="https", host="api.openai.com", port=443, path="/v1/chat/completions",
        query=[], headers=[("content-type", "application/json")], read_body=lambda: raw,
        controls=controls,
    )  # fmt: skip


def begin(engine: Engine, body: Any = CHAT) -> FlowState:
    state = engine.begin(head(body))
    assert isinstance(state, FlowState)
    return state


async def settle(engine: Engine) -> None:
    """Until every single flight ended (the store's commit callbacks ran on this loop)."""
    assert engine.store is not None
    engine.store.flush(10)
    async with asyncio.timeout(10):
        while len(engine.flights):
            await asyncio.sleep(0)


def sample(engine: Engine, name: str, **labels: str) -> float:
    return engine.registry.get_sample_value(name, labels) or 0.0


class Upstream:
    """Counts the calls the engine forwards, and answers each one when told to."""

    def __init__(self, engine: Engine, body: bytes, headers: list[tuple[str, str]]) -> None:
        self.engine, self.body, self.headers = engine, body, headers
        self.calls = 0
        self.release = asyncio.Event()

    async def call(self, body: Any = CHAT) -> FlowState:
        state = begin(self.engine, body)
        answer = await self.engine.decide(state)
        if answer is None:
            self.calls += 1
            await self.release.wait()
            tee = self.engine.tee(state, dict(self.headers)["content-type"], None)
            if tee is not None:
                for i in range(0, len(self.body), 7):
                    tee(self.body[i : i + 7])
                tee(b"")
            self.engine.finish(state, ResponseInfo(200, self.headers, self.body))
        else:
            assert isinstance(answer, Recording)
            self.engine.finish(state, ResponseInfo(answer.status, answer.headers, answer.body))
        return state


async def until(predicate: Any) -> None:
    async with asyncio.timeout(10):
        while not predicate():
            await asyncio.sleep(0)


# --- single flight ----------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("explain", [False, True], ids=["plain", "explain-misses"])
async def test_identical_concurrent_misses_make_one_upstream_call(
    engine: Engine, stream: bool, explain: bool
) -> None:
    engine.configure({"llmreel_explain_misses": explain}, {"llmreel_explain_misses"})
    body = {**CHAT, "stream": True} if stream else CHAT
    upstream = Upstream(engine, SSE if stream else json.dumps(CHAT_RESPONSE).encode(),
                        SSE_HEADERS if stream else JSON_HEADERS)  # fmt: skip
    calls = [asyncio.create_task(upstream.call(body)) for _ in range(10)]
    await until(lambda: upstream.calls == 1 and len(engine.flights) == 1)
    await asyncio.sleep(0)  # give any second leader a turn to appear before releasing
    upstream.release.set()
    states = await asyncio.gather(*calls)
    await settle(engine)
    assert upstream.calls == 1
    assert sorted(s.outcome for s in states) == ["hit"] * 9 + ["miss"]
    assert engine.report.hits == 9


async def test_a_failure_on_the_leaders_path_frees_the_followers(engine: Engine) -> None:
    """An exception between becoming the leader and recording must not strand the followers:
    they learn the leader failed, and go upstream themselves (one new leader at a time)."""
    store = engine.store
    assert store is not None
    real_submit = store.submit
    failures = 0

    def broken_submit(rec: Recording) -> concurrent.futures.Future[None]:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise RuntimeError("injected failure in the record path")
        return real_submit(rec)

    store.submit = broken_submit  # type: ignore[method-assign]
    upstream = Upstream(engine, json.dumps(CHAT_RESPONSE).encode(), JSON_HEADERS)
    calls = [asyncio.create_task(upstream.call()) for _ in range(5)]
    await until(lambda: upstream.calls == 1)
    upstream.release.set()
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
    await settle(engine)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert [str(e) for e in errors] == ["injected failure in the record path"]
    # The leader failed; one follower became the next leader and recorded; the rest replayed it.
    assert upstream.calls == 2
    assert sorted(r.outcome for r in results if isinstance(r, FlowState)) == ["hit"] * 3 + ["miss"]
    assert len(engine.flights) == 0


async def test_a_failed_write_lets_followers_go_upstream(engine: Engine) -> None:
    store = engine.store
    assert store is not None

    def failing_submit(rec: Recording) -> concurrent.futures.Future[None]:
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        future.set_exception(OSError("disk on fire"))
        return future

    store.submit = failing_submit  # type: ignore[method-assign]
    upstream = Upstream(engine, json.dumps(CHAT_RESPONSE).encode(), JSON_HEADERS)
    upstream.release.set()
    calls = [asyncio.create_task(upstream.call()) for _ in range(3)]
    states = await asyncio.wait_for(asyncio.gather(*calls), 10)
    assert upstream.calls == 3  # nothing was ever recorded, so each one had to go upstream
    assert all(s.outcome == "miss" for s in states)
    assert engine.report.write_failures == 3


async def test_single_flight_lease_is_released_once_and_wakes_followers() -> None:
    flights = SingleFlight(wait_s=10)
    lease = flights.lead("k")
    assert lease is not None and flights.lead("k") is None
    follower = asyncio.create_task(flights.follow("k"))
    await asyncio.sleep(0)
    with lease:
        pass  # leaving the block without a recording releases it as failed
    assert await follower is False
    lease.release(True)  # a second release changes nothing
    assert await flights.follow("k") is None
    assert len(flights) == 0


async def test_a_follower_stops_waiting_after_the_deadline() -> None:
    flights = SingleFlight(wait_s=0.01)
    lease = flights.lead("k")
    assert lease is not None
    assert await flights.follow("k") is False  # timed out: it may go upstream itself
    lease.release(True)


# --- behaviour comes from the body as sent ----------------------------------------------------


async def test_ignored_fields_leave_the_model_and_streaming_alone(engine: Engine) -> None:
    engine.configure({"llmreel_ignore_fields": ["model", "stream"]}, {"llmreel_ignore_fields"})
    state = begin(engine, {**CHAT, "stream": True})
    assert state.model == "gpt-4o-mini"
    assert state.stream is True
    assert "model" not in state.canonical["body"] and "stream" not in state.canonical["body"]
    other = begin(engine, {**CHAT, "model": "gpt-4o"})
    assert other.key == state.key  # still left out of the key


async def test_ignored_model_is_still_priced_and_labelled(engine: Engine) -> None:
    engine.configure({"llmreel_ignore_fields": ["model"]}, {"llmreel_ignore_fields"})
    upstream = Upstream(engine, json.dumps({**CHAT_RESPONSE, "model": None}).encode(), JSON_HEADERS)
    upstream.release.set()
    seen: list[Any] = []
    engine.sinks.append(seen.append)
    await upstream.call()
    assert seen[0].model == "gpt-4o-mini"
    assert seen[0].cost_usd and seen[0].cost_usd > 0


# --- recordings that must not be made ---------------------------------------------------------


async def test_a_damaged_stream_copy_is_not_recorded(engine: Engine) -> None:
    state = begin(engine, {**CHAT, "stream": True})
    assert await engine.decide(state) is None
    tee = engine.tee(state, "text/event-stream", None)
    assert tee is not None
    calls = 0
    real_clock = tee._clock

    def clock() -> float:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise MemoryError("no room for the copy")
        return real_clock()

    tee._clock = clock
    out = b"".join(tee(SSE[i : i + 40]) for i in range(0, len(SSE), 40))
    assert out == SSE  # the client got every byte
    assert not tee.intact
    engine.finish(state, ResponseInfo(200, SSE_HEADERS, tee.body()))
    await settle(engine)
    assert engine.store is not None and engine.store.get("default", state.key) is None
    assert sample(engine, "llmreel_recordings_skipped_total", reason="copy_failed") == 1


async def test_a_response_over_the_limit_streams_through_unrecorded(engine: Engine) -> None:
    engine.configure({"llmreel_max_record_bytes": 100}, {"llmreel_max_record_bytes"})
    state = begin(engine)
    assert await engine.decide(state) is None
    big = json.dumps({**CHAT_RESPONSE, "pad": "x" * 500}).encode()
    tee = engine.tee(state, "application/json", len(big))
    assert tee is not None  # too large to buffer: it streams
    assert b"".join(tee(big[i : i + 64]) for i in range(0, len(big), 64)) == big
    assert tee.overflow and tee.parts == []
    engine.finish(state, ResponseInfo(200, JSON_HEADERS, tee.body()))
    await settle(engine)
    assert engine.store is not None and engine.store.get("default", state.key) is None
    assert sample(engine, "llmreel_recordings_skipped_total", reason="too_large") == 1


def test_bad_control_header_is_answered_in_the_providers_shape(engine: Engine) -> None:
    reply = engine.begin(head(**{"llmreel-cache": "sometimes"}))
    assert isinstance(reply, ErrorReply) and reply.status == 400
    assert b"llmreel-cache" in reply.body


async def test_session_header_and_run_id_tag_the_exchange(engine: Engine) -> None:
    engine.configure({"llmreel_run_id": "01RUN"}, {"llmreel_run_id"})
    seen: list[Any] = []
    engine.sinks.append(seen.append)
    state = engine.begin(head(**{"llmreel-session": "checkout-agent-7"}))
    assert isinstance(state, FlowState)
    assert await engine.decide(state) is None
    engine.finish(state, ResponseInfo(200, JSON_HEADERS, json.dumps(CHAT_RESPONSE).encode()))
    await settle(engine)
    assert (seen[0].session, seen[0].run) == ("checkout-agent-7", "01RUN")
    untagged = engine.begin(head())
    assert isinstance(untagged, FlowState) and untagged.session == ""


async def test_a_miss_the_upstream_failed_is_not_reported_as_recorded(engine: Engine) -> None:
    state = begin(engine)
    assert await engine.decide(state) is None
    engine.finish(state, ResponseInfo(500, JSON_HEADERS, b'{"error": {"message": "boom"}}'))
    ok = begin(engine, {**CHAT, "temperature": 0})
    assert await engine.decide(ok) is None
    engine.finish(ok, ResponseInfo(200, JSON_HEADERS, json.dumps(CHAT_RESPONSE).encode()))
    await settle(engine)
    assert (engine.report.new, engine.report.failed) == (1, 1)
    assert "1 recorded" in engine.report.render()


# --- budgets ----------------------------------------------------------------------------------


async def test_a_budget_stops_a_loop_after_the_budgets_worth_of_calls(engine: Engine) -> None:
    # Each call costs 9 input and 3 output gpt-4o-mini tokens: $3.15e-06 at $0.15/$0.60 per M.
    engine.configure({"llmreel_budget_usd": "0.00001"}, {"llmreel_budget_usd"})
    upstream = Upstream(engine, json.dumps(CHAT_RESPONSE).encode(), JSON_HEADERS)
    upstream.release.set()
    refused: list[ErrorReply] = []
    for n in range(10):  # a runaway agent loop: every prompt new
        state = begin(engine, {**CHAT, "messages": [{"role": "user", "content": f"step {n}"}]})
        answer = await engine.decide(state)
        if isinstance(answer, ErrorReply):
            refused.append(answer)
            engine.finish(state, ResponseInfo(answer.status, list(answer.headers), answer.body))
            continue
        assert answer is None
        upstream.calls += 1
        engine.finish(state, ResponseInfo(200, JSON_HEADERS, upstream.body))
    await settle(engine)
    assert upstream.calls == 4  # $9.45e-06 after three calls is under the budget; $1.26e-05 is not
    assert len(refused) == 6 and {r.status for r in refused} == {402}
    assert b"$0.0000" in refused[0].body and b"--budget-usd" in refused[0].body
    assert ("x-should-retry", "false") in refused[0].headers
    # Hits are free and keep working.
    again = begin(engine, {**CHAT, "messages": [{"role": "user", "content": "step 0"}]})
    assert isinstance(await engine.decide(again), Recording)
    assert sample(engine, "llmreel_spend_usd") == pytest.approx(4 * 3.15e-06)
    assert sample(engine, "llmreel_budget_usd") == 0.00001
    assert sample(engine, "llmreel_budget_refusals_total") == 6
    assert "spent $0.0000 of a $0.0000 budget; 6 call(s) refused" in engine.report.render()


def test_a_budget_must_be_an_amount(engine: Engine) -> None:
    from llmreel.engine import ConfigError

    with pytest.raises(ConfigError, match="llmreel_budget_usd: 'lots' is not an amount"):
        engine.configure({"llmreel_budget_usd": "lots"}, {"llmreel_budget_usd"})
    engine.configure({"llmreel_budget_usd": "$2.50"}, {"llmreel_budget_usd"})
    assert engine.budget_usd == 2.5


async def test_an_export_directory_is_read_off_the_event_loop(tmp_path: Path) -> None:
    """DirStore reads files: lookups and miss explanations run in a worker thread."""
    import threading

    from llmreel.storage.dirstore import DirStore

    with DirStore(tmp_path / "export") as made:  # an export directory, with one recording
        made.put(Recording(key="0" * 32, namespace="default", status=200, headers=[], body=b"{}",
                           request={**begin_canonical(), "body": {"model": "gpt-4o"}}))  # fmt: skip
    eng = Engine(registry=CollectorRegistry())
    eng.configure({"llmreel_store": str(tmp_path / "export"), "llmreel_mode": "offline"},
                  DEFAULTS.keys())  # fmt: skip
    store = eng.store
    assert isinstance(store, DirStore) and store.blocking_reads
    loop_thread = threading.current_thread()
    reads: list[threading.Thread] = []
    real_get, real_candidates = store.get, store.candidates

    def get(*args: Any, **kw: Any) -> Any:
        reads.append(threading.current_thread())
        return real_get(*args, **kw)

    def candidates(*args: Any, **kw: Any) -> Any:
        reads.append(threading.current_thread())
        return real_candidates(*args, **kw)

    store.get, store.candidates = get, candidates  # type: ignore[method-assign]
    try:
        state = begin(eng)
        reply = await eng.decide(state)
        assert isinstance(reply, ErrorReply) and reply.status == 412
        assert b"model" in reply.body and b"gpt-4o' ->" in reply.body  # compared with the closest
        assert reads and all(thread is not loop_thread for thread in reads)
    finally:
        eng.close()


def begin_canonical() -> dict[str, Any]:
    from llmreel.core.keys import canonical_request

    h = head()
    return canonical_request(
        h.method, h.scheme, h.host, h.port, h.path, h.query, h.headers, h.read_body()
    )


async def test_a_body_keyed_before_gets_the_key_it_would_get_afresh(engine: Engine) -> None:
    from dataclasses import replace

    from llmreel.core.keys import canonical_request, request_digest

    def fresh(h: RequestHead) -> str:
        return request_digest(canonical_request(h.method, h.scheme, h.host, h.port, h.path, h.query,
                                                h.headers, h.read_body(), engine.key_config))  # fmt: skip

    plain = head({**CHAT, "user": "u1"})
    beta = replace(plain, headers=[*plain.headers, ("OpenAI-Beta", "assistants=v2")])
    queried = replace(plain, query=[("api-version", "2024-06-01")])
    for h in (plain, beta, queried, plain, beta, queried):  # each twice: remembered the 2nd time
        state = engine.begin(h)
        assert isinstance(state, FlowState) and state.key == fresh(h)
    assert len({fresh(h) for h in (plain, beta, queried)}) == 3
    remembered = begin(engine, {**CHAT, "user": "u1"}).key
    engine.configure({"llmreel_ignore_fields": ["user"]}, {"llmreel_ignore_fields"})
    assert begin(engine, {**CHAT, "user": "u1"}).key != remembered  # a new config keys afresh
    assert begin(engine, {**CHAT, "user": "u2"}).key == begin(engine, CHAT).key


def test_commit_callbacks_run_on_the_loop_in_one_batch_or_here_once_it_closed() -> None:
    from llmreel.engine.handoff import LoopHandoff

    loop = asyncio.new_event_loop()
    ran: list[str] = []
    handoff = LoopHandoff(loop)
    wakeups = 0
    real = loop.call_soon_threadsafe

    def counting(*args: Any) -> Any:
        nonlocal wakeups
        wakeups += 1
        return real(*args)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    for name in ("a", "b", "c"):
        handoff.call(lambda name=name: ran.append(name), lambda: ran.append("closed"))
    loop.run_until_complete(asyncio.sleep(0))
    assert ran == ["a", "b", "c"] and wakeups == 1
    handoff.call(lambda: ran.append("d"), lambda: ran.append("closed d"))  # scheduled, never run
    loop.close()
    handoff.call(lambda: ran.append("e"), lambda: ran.append("closed e"))
    assert ran[3:] == ["closed d", "closed e"]
