"""The LMDB store: round trips, schema, corruption, permissions, growth, concurrency."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb
import pytest

from llmreel.core.diff import endpoint, explain
from llmreel.storage.lmdbstore import WRITE_ERROR_REASONS, LmdbStore, StoreError, entry_key
from llmreel.storage.records import RecordError, Recording, pack, unpack


def rec(key: str = "k1", namespace: str = "default", body: bytes = b'{"ok":true}', **kw: object) -> Recording:
    return Recording(
        key=key,
        namespace=namespace,
        request={"method": "POST", "path": "/v1/chat/completions", "body": {"model": "m"}},
        status=200,
        headers=[("content-type", "application/json")],
        body=body,
        **kw,  # type: ignore[arg-type]
    )


def test_pack_round_trip_keeps_binary_bodies() -> None:
    original = rec(body=bytes(range(256)) * 10, chunks=[(0.01, 100), (0.5, 2460)], usage={"input": 3})
    assert unpack(pack(original)) == original


@pytest.mark.parametrize("data", [b"", b"LRR1", b"XXXX\x00\x00\x00\x02{}", b"LRR1\x00\x00\x00\x09{bad json"])
def test_unpack_rejects_garbage_with_a_reason(data: bytes) -> None:
    with pytest.raises(RecordError):
        unpack(data)


def test_put_get_iter_delete(tmp_path: Path) -> None:
    with LmdbStore(tmp_path / "s") as store:
        store.put(rec("a"))
        store.put(rec("b", namespace="test_x"))
        store.put(rec("c", namespace="test_x"))
        got = store.get("default", "a")
        assert got is not None and got.body == b'{"ok":true}'
        assert store.get("default", "b") is None
        assert [r.key for r in store.iter("test_x")] == ["b", "c"]
        assert len(list(store.iter())) == 3
        assert store.stats().entries == 3
        assert store.delete("test_x", "b")
        assert not store.delete("test_x", "b")
        assert store.stats().entries == 2


def test_namespace_prefix_does_not_leak_into_longer_names(tmp_path: Path) -> None:
    with LmdbStore(tmp_path / "s") as store:
        store.put(rec("a", namespace="t"))
        store.put(rec("b", namespace="t2"))
        assert [r.key for r in store.iter("t")] == ["a"]


def test_store_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with LmdbStore(path) as store:
        store.put(rec())
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    for name in ("data.mdb", "lock.mdb"):
        assert stat.S_IMODE((path / name).stat().st_mode) == 0o600


def test_submit_commits_in_the_writer_thread(tmp_path: Path) -> None:
    with LmdbStore(tmp_path / "s") as store:
        futures = [store.submit(rec(f"k{i}")) for i in range(500)]
        for f in futures:
            f.result(timeout=10)
        assert store.stats().entries == 500


def test_flush_waits_for_queued_writes(tmp_path: Path) -> None:
    with LmdbStore(tmp_path / "s") as store:
        for i in range(50):
            store.submit(rec(f"k{i}"))
        store.flush(timeout=10)
        assert store.stats().entries == 50


def test_map_grows_when_full(tmp_path: Path) -> None:
    with LmdbStore(tmp_path / "s", map_size=256 * 1024) as store:
        big = b"x" * 100_000
        for i in range(40):  # ~4 MB into a 256 KiB map
            store.put(rec(f"k{i}", body=big))
        assert store.stats().entries == 40
        assert store.get("default", "k39") is not None


def test_other_schema_version_is_refused_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "s"
    LmdbStore(path).close()
    env = lmdb.open(str(path), max_dbs=8)
    with env.begin(write=True, db=env.open_db(b"meta")) as txn:
        txn.put(b"schema", b"99")
    env.close()
    with pytest.raises(StoreError, match=r"schema version 99.*cache export"):
        LmdbStore(path)


def test_corrupt_store_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.mkdir()
    (path / "data.mdb").write_bytes(b"this is not an lmdb file" * 1000)
    with pytest.raises(StoreError, match=str(path)):
        LmdbStore(path)


def test_missing_store_is_not_created_when_reading(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no store at"):
        LmdbStore(tmp_path / "nope", create=False)


def test_corrupt_entry_is_reported_on_get(tmp_path: Path) -> None:
    path = tmp_path / "s"
    LmdbStore(path).close()
    env = lmdb.open(str(path), max_dbs=8)
    with env.begin(write=True, db=env.open_db(b"entries")) as txn:
        txn.put(b"default\x00bad", b"garbage")
    env.close()
    with LmdbStore(path) as store:
        with pytest.raises(StoreError, match="llmreel cache rm bad"):
            store.get("default", "bad")
        assert list(store.iter()) == []  # skipped, with a warning


def _writer(path: str, prefix: str, count: int) -> None:
    with LmdbStore(path) as store:
        for i in range(count):
            store.put(rec(f"{prefix}{i}", body=os.urandom(2000)))


def test_two_processes_recording_into_one_store_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    LmdbStore(path, map_size=128 * 1024).close()
    spawn = multiprocessing.get_context("spawn")
    procs = [spawn.Process(target=_writer, args=(path, p, 300)) for p in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with LmdbStore(path) as store:
        assert store.stats().entries == 600


def test_writing_while_iterating_in_the_same_thread(tmp_path: Path) -> None:
    # More entries than one read batch, and writes that grow a small map mid-iteration: an
    # iteration holds no transaction while the caller has an entry, so nothing waits on it.
    with LmdbStore(tmp_path / "s", map_size=64 * 1024) as store:
        keys = [f"k{i:04d}" for i in range(2500)]
        store.write_raw([(b"entries", f"default\x00{k}".encode(), pack(rec(k))) for k in keys])
        seen = []
        for r in store.iter():
            seen.append(r.key)
            if len(seen) % 250 == 0:
                store.put(rec(f"a{r.key}", body=os.urandom(100_000)))  # sorts before the cursor
        assert seen == keys
        assert store.stats().entries == 2510


def test_raw_databases_iterate_by_prefix_both_ways(tmp_path: Path) -> None:
    with LmdbStore(tmp_path / "s") as store:
        store.write_raw([(b"log", k, k.upper()) for k in (b"a1", b"b1", b"b2", b"b3", b"c1")])
        assert [k for k, _ in store.iter_raw(b"log", prefix=b"b")] == [b"b1", b"b2", b"b3"]
        assert [k for k, _ in store.iter_raw(b"log", prefix=b"b", reverse=True)] == [b"b3", b"b2", b"b1"]
        assert [k for k, _ in store.iter_raw(b"log", reverse=True)][:2] == [b"c1", b"b3"]
        assert [k for k, _ in store.iter_raw(b"log", start=b"b2", reverse=True)] == [b"b2", b"b1", b"a1"]
        assert [k for k, _ in store.iter_raw(b"log", start=b"b15", reverse=True)] == [b"b1", b"a1"]
        assert [k for k, _ in store.iter_raw(b"log", start=b"b2")] == [b"b2", b"b3", b"c1"]
        assert [k for k, _ in store.iter_raw(b"log", prefix=b"z")] == []
        assert [k for k, _ in store.iter_raw(b"log", prefix=b"z", reverse=True)] == []
        assert store.get_raw(b"log", b"b2") == b"B2"
        store.submit_raw([(b"log", b"b2", None), (b"used", b"x", b"1")]).result(5)
        assert store.get_raw(b"log", b"b2") is None and store.count(b"log") == 4
        assert store.count(b"entries") == 0  # other databases untouched


def test_lazy_values_are_made_in_the_writer_and_a_failing_one_fails_alone(tmp_path: Path) -> None:
    import threading

    made_in: list[str] = []

    def make() -> bytes:
        made_in.append(threading.current_thread().name)
        return b"made"

    def broken() -> bytes:
        raise ValueError("boom")

    with LmdbStore(tmp_path / "s") as store:
        good = store.submit_raw([(b"log", b"a", make)])
        bad = store.submit_raw([(b"log", b"b", broken)])
        good.result(5)
        with pytest.raises(StoreError, match="boom"):
            bad.result(5)
        assert store.get_raw(b"log", b"a") == b"made" and store.get_raw(b"log", b"b") is None
        assert made_in == ["llmreel-store-writer"]


def _iterate_while_the_map_grows(path: str, count: int) -> None:
    """Readers iterate (`iter`, `iter_raw`) in threads while the writer grows a small map."""
    import threading

    written: list[str] = []  # keys committed so far, appended by the writer only
    done = threading.Event()
    failures: list[BaseException] = []

    def read(raw: bool) -> None:
        try:
            while not done.is_set():
                before = set(written)
                if raw:
                    seen = [k.split(b"\x00")[1].decode() for k, _ in store.iter_raw(b"entries")]
                else:
                    seen = [r.key for r in store.iter("default")]
                assert seen == sorted(set(seen)), "iteration must be in key order, no repeats"
                assert before <= set(seen), "an entry committed before the iteration was missed"
                # Let the writer run: two threads spinning in Python can keep the GIL from it
                # for as long as they spin (CPython does not hand it over fairly).
                time.sleep(0)
        except BaseException as exc:  # noqa: BLE001 - reported by the parent thread
            failures.append(exc)

    with LmdbStore(path, map_size=64 * 1024) as store:
        readers = [threading.Thread(target=read, args=(raw,)) for raw in (False, True)]
        for reader in readers:
            reader.start()
        try:
            for i in range(count):
                key = f"k{i:04d}"
                store.put(rec(key, body=os.urandom(40_000)))  # incompressible: the map must grow
                written.append(key)
        finally:
            done.set()
            for reader in readers:
                reader.join()
        assert not failures, failures
        assert [r.key for r in store.iter("default")] == written
        assert int(store.env.info()["map_size"]) > 64 * 1024


def test_iteration_survives_the_map_growing_under_it(tmp_path: Path) -> None:
    # In a child process: a map resized under an open cursor can kill the process (SIGSEGV).
    spawn = multiprocessing.get_context("spawn")
    child = spawn.Process(target=_iterate_while_the_map_grows, args=(str(tmp_path / "s"), 120))
    child.start()
    child.join(100)
    if child.exitcode is None:
        child.kill()
        child.join(10)
    assert child.exitcode == 0, "the child died or hung (exit code None: it never finished)"


def test_iteration_in_batches_keeps_order_across_batch_boundaries(tmp_path: Path) -> None:
    keys = sorted(b"%c%04d" % (p, i) for p in b"abc" for i in range(700))
    with LmdbStore(tmp_path / "s") as store:
        store.write_raw([(b"log", k, k) for k in keys])
        bs = [k for k in keys if k.startswith(b"b")]
        assert [k for k, _ in store.iter_raw(b"log")] == keys
        assert [k for k, _ in store.iter_raw(b"log", reverse=True)] == keys[::-1]
        assert [k for k, _ in store.iter_raw(b"log", prefix=b"b")] == bs
        assert [k for k, _ in store.iter_raw(b"log", prefix=b"b", reverse=True)] == bs[::-1]
        assert [k for k, _ in store.iter_raw(b"log", start=b"b0350")] == keys[1050:]
        assert [k for k, _ in store.iter_raw(b"log", start=b"b0350", reverse=True)] == keys[1050::-1]


class _Seen(logging.Handler):
    """A log handler that sets an event when a record containing `text` arrives."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = threading.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if self.text in message:
            self.messages.append(message)
            self.event.set()


@contextlib.contextmanager
def _watching(text: str) -> Iterator[_Seen]:
    handler = _Seen(text)
    logger = logging.getLogger("llmreel.storage")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _held_writer() -> tuple[Callable[[], bytes], threading.Event, threading.Event]:
    """A lazy value that holds the writer thread (which makes it) until `release` is set."""
    started, release = threading.Event(), threading.Event()

    def make() -> bytes:
        started.set()
        assert release.wait(30), "the test never released the writer"
        return b"held"

    return make, started, release


def test_close_waits_for_a_busy_writer_and_says_what_is_pending(tmp_path: Path) -> None:
    path = tmp_path / "s"
    store = LmdbStore(path)
    make, started, release = _held_writer()
    held = store.submit_raw([(b"log", b"held", make)])
    queued = store.submit_raw([(b"log", b"queued", b"q" * 5000)])
    assert started.wait(10)
    with _watching("still waiting") as seen:
        closer = threading.Thread(target=store.close, kwargs={"report_every_s": 0.01})
        closer.start()
        assert seen.event.wait(10), "close() said nothing about the pending writes"
        assert closer.is_alive()
        assert store.env.info()["map_size"] > 0  # the environment is still open
        assert "2 writes" in seen.messages[0] and str(path) in seen.messages[0]
        release.set()
        closer.join(30)
    assert not closer.is_alive()
    held.result(0)
    queued.result(0)
    with LmdbStore(path) as again:
        assert again.get_raw(b"log", b"held") == b"held"
        assert again.get_raw(b"log", b"queued") == b"q" * 5000


def test_a_full_write_backlog_fails_fast_with_its_reason(tmp_path: Path) -> None:
    bound = 200_000
    with LmdbStore(tmp_path / "s", backlog_bytes=bound) as store, _watching("queue") as seen:
        make, started, release = _held_writer()
        store.submit_raw([(b"log", b"held", make)])
        assert started.wait(10)
        accepted, refused = [], []
        for i in range(60):
            future = store.submit(rec(f"k{i}", body=os.urandom(10_000)))
            assert store.backlog.bytes <= bound
            if future.done() and future.exception() is not None:
                refused.append(future)
            else:
                accepted.append(future)
        assert accepted and refused
        error = refused[0].exception()
        assert isinstance(error, StoreError) and error.reason == "backlog"
        assert str(tmp_path / "s") in str(error)
        assert seen.event.is_set()  # logged, not only counted
        assert "backlog" in WRITE_ERROR_REASONS  # so the metric has a series for it
        release.set()
        for future in accepted:
            future.result(30)
        assert store.backlog.bytes == 0 and store.backlog.jobs == 0
        store.submit(rec("later")).result(30)  # accepted again once the writer caught up
        assert store.stats().entries == len(accepted) + 1


def chat_rec(i: int, namespace: str = "default", path: str = "/v1/chat/completions") -> Recording:
    """Recording `i` of a long conversation: request i has turns 0..i."""
    turns = [{"role": "user", "content": f"turn {n}"} for n in range(i + 1)]
    request = {
        "method": "POST", "scheme": "https", "host": "api.openai.com", "port": 443, "path": path,
        "query": [], "headers": {}, "body": {"model": "m", "messages": turns},
    }  # fmt: skip
    return Recording(
        key=f"{i:032x}", namespace=namespace, request=request, status=200, headers=[], body=b"{}"
    )


def test_candidates_are_the_most_alike_recordings_of_the_endpoint(tmp_path: Path) -> None:
    with LmdbStore(tmp_path / "s") as store:
        assert store.blocking_reads is False
        recs = [chat_rec(i) for i in range(120)]
        for r in recs[:20]:
            store.put(r)
        store.put_many(recs[20:40])
        for future in [store.submit(r) for r in recs[40:80]]:
            future.result(10)
        store.write_raw([(b"entries", entry_key(r.namespace, r.key), pack(r)) for r in recs[80:]])
        store.put(recs[0])  # again: replaced, not indexed twice
        store.write_raw([(b"entries", entry_key("default", recs[1].key), pack(recs[1]))])
        assert store.count(b"endpoints") == store.count(b"entries") == 120
        for i in range(200, 210):  # the same requests elsewhere: never candidates
            store.put(chat_rec(i, path="/v1/responses"))
            store.put(chat_rec(i, namespace="other"))
        wanted = chat_rec(60).request
        wanted["body"]["messages"][-1]["content"] = "changed"
        assert len(store.candidates("default", wanted, limit=5)) == 5
        found = store.candidates("default", wanted)
        assert {endpoint(r) for r in found} == {endpoint(wanted)}
        assert explain(wanted, found) == (
            "The closest recording of this endpoint differs in: "
            "messages[60].content: 'turn 60' -> 'changed'."
        )
        assert store.delete("default", recs[60].key)
        assert recs[60].request not in store.candidates("default", wanted, limit=200)
        assert len(store.candidates("default", wanted, limit=200)) == 119
        assert store.candidates("nobody", wanted) == []


def test_candidates_index_old_stores_and_follow_older_writers(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with LmdbStore(path) as store:
        for i in range(30):
            store.put(chat_rec(i))
    env = lmdb.open(str(path), max_dbs=16)
    with env.begin(write=True) as txn:
        # What a store written by an older llmreel looks like: no index; and a corrupt entry.
        txn.drop(env.open_db(b"endpoints", txn=txn), delete=True)
        txn.put(b"default\x00bad", b"garbage", db=env.open_db(b"entries", txn=txn))
    env.close()
    wanted = chat_rec(10).request
    with LmdbStore(path) as store:
        assert store.candidates("default", wanted, limit=1) == [wanted]
        assert store.count(b"endpoints") == store.count(b"entries") == 31
    env = lmdb.open(str(path), max_dbs=16)
    with env.begin(write=True, db=env.open_db(b"entries")) as txn:
        # An older llmreel, sharing the store, adds recordings and removes one.
        for i in (98, 99):
            txn.put(entry_key("default", chat_rec(i).key), pack(chat_rec(i)))
        txn.delete(entry_key("default", chat_rec(10).key))
    env.close()
    with LmdbStore(path) as store:
        found = store.candidates("default", chat_rec(99).request, limit=40)
        assert chat_rec(99).request in found and wanted not in found and len(found) == 31
