"""The UI's index and query layer: threads linked from the wire, forks, sessions, steps with only
what is new, free-text search, totals and labels, on a real store."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmreel.core.exchange import Exchange
from llmreel.log.exchangelog import ExchangeLog
from llmreel.log.labels import LabelError, Labels, Target
from llmreel.log.linking import fingerprint
from llmreel.log.record import exchange_record
from llmreel.storage.lmdbstore import LmdbStore
from llmreel.ui.index import Index, Indexer
from llmreel.ui.queries import (
    ExchangeQuery,
    QueryError,
    list_exchanges,
    list_threads,
    thread_detail,
)
from tests.uiagent import agent_run, chat_exchange


class World:
    def __init__(self, path: Path) -> None:
        self.store = LmdbStore(path)
        self.log = ExchangeLog(self.store, retention_s=None)
        self.labels = Labels(self.store)
        self.index = Index(path)
        self.indexer = Indexer(self.index, self.log, self.labels)
        self.conn = self.index.connect()

    def add(self, *exchanges: Exchange) -> None:
        for ex in exchanges:
            self.log.append(ex)
        self.log.flush()
        self.indexer.catch_up()
        self.indexer.sync_labels()

    def close(self) -> None:
        self.conn.close()
        self.indexer.stop()
        self.store.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path / "store")
    yield w
    w.close()


def test_a_call_continues_the_one_whose_conversation_and_answer_it_begins_with() -> None:
    first, reply = chat_exchange(
        [{"role": "user", "content": "hi"}], tool_calls=[("c1", "f", {"a": 1, "b": 2})]
    )
    # The SDK resends the arguments with other whitespace and key order.
    reply["tool_calls"][0]["function"]["arguments"] = '{ "b": 2,  "a": 1 }'
    second, _ = chat_exchange([{"role": "user", "content": "hi"}, reply,
                               {"role": "tool", "tool_call_id": "c1", "content": "ok"}])  # fmt: skip
    a, b = fingerprint(exchange_record(first)), fingerprint(exchange_record(second))
    assert a.continuation in b.prefixes
    assert b.prefixes.index(a.continuation) + 1 == a.length
    other, _ = chat_exchange([{"role": "user", "content": "hi"},
                              {"role": "assistant", "content": "something else"}])  # fmt: skip
    assert a.continuation not in fingerprint(exchange_record(other)).prefixes


def test_an_agent_run_is_one_thread_with_only_new_messages_per_step(world: World) -> None:
    world.add(*agent_run(4))
    threads = list_threads(world.conn)["items"]
    assert len(threads) == 1 and threads[0]["steps"] == 4
    thread = thread_detail(world.conn, world.labels, threads[0]["id"])
    steps = thread["steps"]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    first = steps[0]["new_messages"]
    assert [m["role"] for m in first] == ["system", "user"]
    assert steps[0]["tool_calls"][0]["name"] == "lookup"
    for n, step in enumerate(steps[1:], start=1):
        # Only the tool result that came back: not the system prompt, the task or earlier calls.
        assert [m["role"] for m in step["new_messages"]] == ["tool"]
        assert step["new_messages"][0]["parts"][0]["text"] == f"result {n - 1}"
        assert step["parent"] == steps[n - 1]["exchange"] and not step["fork"]
    assert steps[-1]["answer"] == "Done after 3 tools."
    assert steps[-1]["cumulative_cost_usd"] == pytest.approx(sum(s["cost_usd"] for s in steps))


def test_two_calls_continuing_one_step_are_a_fork(world: World) -> None:
    base, reply = chat_exchange([{"role": "user", "content": "plan"}], answer="Plan: A or B")
    left, _ = chat_exchange(
        [{"role": "user", "content": "plan"}, reply, {"role": "user", "content": "do A"}]
    )
    right, _ = chat_exchange(
        [{"role": "user", "content": "plan"}, reply, {"role": "user", "content": "do B"}]
    )
    world.add(base, left, right)
    (thread,) = list_threads(world.conn)["items"]
    steps = thread_detail(world.conn, world.labels, thread["id"])["steps"]
    assert [s["fork"] for s in steps] == [False, False, True]
    assert steps[1]["parent_step"] == steps[2]["parent_step"] == 1
    assert steps[1]["branch"] != steps[2]["branch"]


def test_unrelated_calls_and_other_namespaces_are_separate_threads(world: World) -> None:
    a, reply = chat_exchange([{"role": "user", "content": "one"}], answer="x")
    b, _ = chat_exchange([{"role": "user", "content": "one"}, reply, {"role": "user", "content": "y"}],
                         namespace="other")  # fmt: skip
    c, _ = chat_exchange([{"role": "user", "content": "two"}], answer="z")
    world.add(a, b, c)
    assert len(list_threads(world.conn)["items"]) == 3


def test_the_session_header_groups_calls_and_runs_filter_threads(world: World) -> None:
    a, _ = chat_exchange(
        [{"role": "user", "content": "one"}], answer="x", session="triage-7", run="R1"
    )
    b, _ = chat_exchange(
        [{"role": "user", "content": "two"}], answer="y", session="triage-7", run="R1"
    )
    c, _ = chat_exchange([{"role": "user", "content": "three"}], answer="z", run="R2")
    world.add(a, b, c)
    (thread,) = list_threads(world.conn, run="R1")["items"]
    assert thread["id"] == "session:triage-7" and thread["steps"] == 2
    assert [i["id"] for i in list_exchanges(world.conn, ExchangeQuery(run="R2"))["items"]] == [c.id]


def test_free_text_finds_the_step_that_brought_the_text(world: World) -> None:
    run = agent_run(3, task="Summarise the QUARTERLY report")
    world.add(*run)
    for text in ("quarterly", "RESULT 1", "step 0", "Done after"):
        found = list_exchanges(world.conn, ExchangeQuery(q=text))["items"]
        assert len(found) == 1, text
    assert list_exchanges(world.conn, ExchangeQuery(q="no such words"))["items"] == []
    assert len(list_exchanges(world.conn, ExchangeQuery(q="1"))["items"]) >= 1  # short: a scan


def test_totals_count_hits_as_saved_and_page_with_before(world: World) -> None:
    a, _ = chat_exchange([{"role": "user", "content": "a"}], answer="1")
    b, _ = chat_exchange([{"role": "user", "content": "b"}], answer="2", cache="hit")
    c, _ = chat_exchange([{"role": "user", "content": "c"}], answer="3", status=500, cost_usd=None)
    world.add(a, b, c)
    page = list_exchanges(world.conn, ExchangeQuery(limit=2))
    assert [i["id"] for i in page["items"]] == [c.id, b.id] and page["next_before"] == b.id
    rest = list_exchanges(world.conn, ExchangeQuery(limit=2, before=page["next_before"]))
    assert [i["id"] for i in rest["items"]] == [a.id]
    totals = page["totals"]
    assert totals["requests"] == 3 and totals["errors"] == 1
    assert totals["cost_usd"] == pytest.approx(a.cost_usd)
    assert totals["saved_usd"] == pytest.approx(b.cost_usd)
    assert totals["hit_ratio"] == pytest.approx(1 / 3)
    assert totals["p50_s"] == 0.5
    errors = list_exchanges(world.conn, ExchangeQuery(errors=True))["items"]
    assert [i["id"] for i in errors] == [c.id]


def test_labels_filter_and_reject_odd_words(world: World) -> None:
    run = agent_run(2)
    world.add(*run)
    world.labels.set(Target.exchange(run[0].id), "bad", "wrong tool")
    world.indexer.sync_labels()
    (item,) = list_exchanges(world.conn, ExchangeQuery(label="bad"))["items"]
    assert item["id"] == run[0].id and item["label"] == {"label": "bad", "note": "wrong tool"}
    thread_id = list_threads(world.conn)["items"][0]["id"]
    world.labels.set(Target.thread(thread_id), "good")
    world.indexer.sync_labels()
    assert len(list_exchanges(world.conn, ExchangeQuery(label="good"))["items"]) == 2
    with pytest.raises(LabelError):
        world.labels.set(Target.exchange(run[0].id), "<script>")


def test_labelled_exchanges_outlive_retention(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "s")
    try:
        exchange_log = ExchangeLog(store, retention_s=60)
        old = [
            chat_exchange([{"role": "user", "content": str(n)}], answer="a", started=1000.0 + n)[0]
            for n in range(3)
        ]
        for ex in old:
            exchange_log.append(ex)
        exchange_log.flush()
        Labels(store).set(Target.exchange(old[1].id), "good")
        assert exchange_log.prune() == 2
        assert [r["id"] for r in exchange_log.iter()] == [old[1].id]
    finally:
        store.close()


def test_the_index_is_private_and_rebuilds_after_deletion(tmp_path: Path) -> None:
    w = World(tmp_path / "store")
    try:
        w.add(*agent_run(2))
        assert stat.S_IMODE(os.stat(w.index.path).st_mode) == 0o600
    finally:
        w.close()
    os.unlink(tmp_path / "store" / "ui-index.sqlite3")
    w = World(tmp_path / "store")
    try:
        w.indexer.catch_up()
        assert list_threads(w.conn)["items"][0]["steps"] == 2
    finally:
        w.close()


@pytest.mark.parametrize("params", [{"limit": "0"}, {"limit": "x"}, {"since": "yesterday-ish"}])
def test_bad_filters_say_what_is_accepted(params: dict[str, Any]) -> None:
    with pytest.raises(QueryError):
        ExchangeQuery.parse(params)


def test_log_ls_finds_a_run_a_session_and_a_label(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from llmreel.cli.main import main

    store = LmdbStore(tmp_path / "s")
    exchange_log = ExchangeLog(store, retention_s=None)
    a, _ = chat_exchange([{"role": "user", "content": "a"}], answer="1", run="01RUN")
    b, _ = chat_exchange([{"role": "user", "content": "b"}], answer="2", session="s1")
    for ex in (a, b):
        exchange_log.append(ex)
    exchange_log.flush()
    Labels(store).set(Target.exchange(b.id), "bad", "no")
    store.close()
    runner = CliRunner()
    for args, expected in (
        (["--run", "01RUN"], a.id),
        (["--session", "s1"], b.id),
        (["--label", "bad"], b.id),
    ):
        result = runner.invoke(main, ["log", "ls", "--store", str(tmp_path / "s"), "--json", *args])
        assert result.exit_code == 0, result.output
        assert result.output.count("\n") == 1 and expected in result.output
