"""Export directories as stores: DirStore, sync_export and `open_store`'s detection."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from llmreel.core.diff import closest, endpoint
from llmreel.storage.dirstore import DirStore, sync_export
from llmreel.storage.export import MARKER_FILE, entry_path
from llmreel.storage.lmdbstore import LmdbStore, StoreError
from llmreel.storage.records import Recording
from llmreel.storage.stores import open_store, store_kind
from tests.test_export import FIXTURES, SSE, event_chunks, make
from tests.test_store import chat_rec

KEY_A = "a" * 32
KEY_B = "b" * 32


def sample_recordings() -> list[Recording]:
    recs = []
    for i, path in enumerate(sorted(FIXTURES.glob("*.*"))):
        if path.suffix not in (".json", ".sse"):
            continue
        body = path.read_bytes()
        sse = path.suffix == ".sse"
        recs.append(
            make(
                body,
                SSE if sse else "application/json",
                key=f"{i:032x}",
                namespace=["default", "tests/test_a.py::test_x", "Ünïcode ns"][i % 3],
                chunks=event_chunks(body) if sse else [],
                seq=1 if i == 5 else 0,
            )
        )
    return recs


def test_put_get_iter_delete(tmp_path: Path) -> None:
    with DirStore(tmp_path / "rec") as store:
        assert (tmp_path / "rec" / MARKER_FILE).exists()
        a = make(b'{"a":1}', key=KEY_A)
        b = make(b'{"b":2}', key=KEY_B, namespace="other")
        store.put(a)
        store.put(b)
        store.put(make(b'{"a":2}', key=KEY_A, seq=2))
        assert store.get("default", KEY_A) == a
        assert store.get("default", KEY_A, 2) is not None
        assert store.get("default", KEY_B) is None
        assert store.get("nope", KEY_A) is None
        assert [r.key for r in store.iter("other")] == [KEY_B]
        assert [(r.namespace, r.seq) for r in store.iter()] == [
            ("default", 0), ("default", 2), ("other", 0)
        ]  # fmt: skip
        stats = store.stats()
        assert stats.entries == 3 and stats.size_bytes > 0
        assert store.delete("other", KEY_B) and not store.delete("other", KEY_B)
        assert not (tmp_path / "rec" / "other").exists(), "empty namespaces are removed"
        assert (tmp_path / "rec" / "default" / f"{KEY_A}.2.json").exists()


def test_files_are_private_and_writes_atomic(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    with DirStore(root) as store:
        store.put(make(b"{}", key=KEY_A))
    file = root / entry_path("default", KEY_A)
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert stat.S_IMODE(file.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert not [p for p in file.parent.iterdir() if p.name.startswith(".")], "no temp files left"


def test_unchanged_put_does_not_touch_the_file(tmp_path: Path) -> None:
    with DirStore(tmp_path) as store:
        rec = make(b'{"x":1}', key=KEY_A)
        store.put(rec)
        file = store.file_for("default", KEY_A)
        before = file.stat()
        assert not store.write(rec)
        after = file.stat()
        assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
        assert store.write(make(b'{"x":2}', key=KEY_A))


def test_submit_flush_close(tmp_path: Path) -> None:
    store = DirStore(tmp_path)
    futures = [store.submit(make(b"{}", key=f"{i:032x}")) for i in range(50)]
    store.flush(timeout=10)
    assert all(f.done() for f in futures)
    queued = store.submit(make(b"{}", key=KEY_B))
    store.close()
    assert queued.result(timeout=1) is None, "what was queued before close is written"
    late = store.submit(make(b"{}", key=KEY_A))
    with pytest.raises(StoreError, match="closed"):
        late.result(timeout=1)
    assert DirStore(tmp_path).stats().entries == 51


def test_concurrent_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    store = DirStore(tmp_path)
    small, big = make(b'{"v":1}', key=KEY_A), make(b'{"v":"' + b"x" * 200_000 + b'"}', key=KEY_A)
    store.put(small)
    stop = threading.Event()
    errors: list[BaseException] = []

    def read() -> None:
        while not stop.is_set():
            try:
                got = store.get("default", KEY_A)
                assert got is not None and got.body in (small.body, big.body)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(30):
        store.put(big if i % 2 else small)
    stop.set()
    reader.join()
    store.close()
    assert not errors


def test_corrupt_file_is_a_clear_error_and_skipped_by_iter(tmp_path: Path) -> None:
    with DirStore(tmp_path) as store:
        store.put(make(b"{}", key=KEY_A))
        store.put(make(b"{}", key=KEY_B))
        store.file_for("default", KEY_A).write_text("{not json")
        with pytest.raises(StoreError, match=f"{KEY_A}.json is corrupt"):
            store.get("default", KEY_A)
        assert [r.key for r in store.iter()] == [KEY_B]


def test_a_file_under_the_wrong_name_is_not_served(tmp_path: Path) -> None:
    with DirStore(tmp_path) as store:
        store.put(make(b"{}", key=KEY_A))
        os.rename(store.file_for("default", KEY_A), store.file_for("default", KEY_B))
        assert store.get("default", KEY_B) is None


def test_other_export_versions_are_refused(tmp_path: Path) -> None:
    (tmp_path / MARKER_FILE).write_text('{"format": "llmreel-export", "version": 7}')
    with pytest.raises(StoreError, match="format version 7"):
        DirStore(tmp_path)


# --- sync_export ------------------------------------------------------------------------------


def test_sync_export_is_incremental(tmp_path: Path) -> None:
    recs = sample_recordings()
    out = tmp_path / "export"
    first = sync_export(recs, out)
    assert (first.written, first.unchanged, first.removed) == (len(recs), 0, 0)
    files = sorted(p for p in out.rglob("*.json"))
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}
    contents = {p: p.read_bytes() for p in files}

    again = sync_export(recs, out)
    assert (again.written, again.unchanged, again.removed) == (0, len(recs), 0)
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files} == before
    assert {p: p.read_bytes() for p in files} == contents

    gone = recs[0]
    changed = make(b'{"changed":true}', key=recs[1].key, namespace=recs[1].namespace)
    third = sync_export([changed, *recs[2:]], out)
    assert (third.written, third.removed) == (1, 1)
    assert not (out / entry_path(gone.namespace, gone.key, gone.seq)).exists()
    unrelated = out / "README.md"
    unrelated.write_text("hello")
    sync_export([], out)
    assert unrelated.exists() and (out / MARKER_FILE).exists()
    assert not [p for p in out.iterdir() if p.is_dir()], "empty namespace directories go"


def test_sync_export_refuses_case_colliding_namespaces(tmp_path: Path) -> None:
    recs = [make(b"{}", key=KEY_A, namespace="Tests"), make(b"{}", key=KEY_B, namespace="tests")]
    with pytest.raises(StoreError, match="differ only in letter case"):
        sync_export(recs, tmp_path / "x")


def test_sync_export_skips_refused_entries(tmp_path: Path) -> None:
    recs = [make(b"{}", key=KEY_A), make(b"{}", key=KEY_B)]
    report = sync_export(recs, tmp_path, refuse=lambda r, d: "no" if r.key == KEY_A else None)
    assert report.written == 1 and [r.key for r, _ in report.refused] == [KEY_A]
    assert not (tmp_path / entry_path("default", KEY_A)).exists()


def test_lmdb_rebuilt_from_an_export_replays_identically(tmp_path: Path) -> None:
    recs = sample_recordings()
    with LmdbStore(tmp_path / "original") as original:
        for rec in recs:
            original.put(rec)
        sync_export(original.iter(), tmp_path / "export")
    with LmdbStore(tmp_path / "rebuilt") as rebuilt, DirStore(tmp_path / "export") as exported:
        for rec in exported.iter():
            rebuilt.put(rec)
        with LmdbStore(tmp_path / "original") as original:
            for rec in recs:
                want = original.get(rec.namespace, rec.key, rec.seq)
                assert want == rec
                assert rebuilt.get(rec.namespace, rec.key, rec.seq) == want
                assert exported.get(rec.namespace, rec.key, rec.seq) == want
            assert list(rebuilt.iter()) == list(original.iter()) == list(exported.iter())
        sync_export(rebuilt.iter(), tmp_path / "export2")
    for file in (tmp_path / "export").rglob("*.json"):
        assert (
            file.read_bytes()
            == (tmp_path / "export2" / file.relative_to(tmp_path / "export")).read_bytes()
        )


def test_long_namespaces_live_in_hashed_directories(tmp_path: Path) -> None:
    namespace = "tests/" + "t/" * 90  # 186 characters, 366 once escaped: shortened
    with DirStore(tmp_path) as store:
        store.put(make(b"{}", key=KEY_A, namespace=namespace))
        assert store.get(namespace, KEY_A) is not None
        assert "~" in store.file_for(namespace, KEY_A).parent.name
        assert [r.namespace for r in store.iter()] == [namespace]
        assert [r.namespace for r in store.iter(namespace)] == [namespace]


# --- open_store -------------------------------------------------------------------------------


def test_open_store_detects_the_kind(tmp_path: Path) -> None:
    assert store_kind(tmp_path / "missing") == "new"
    assert isinstance(open_store(tmp_path / "missing"), LmdbStore)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".gitkeep").touch()
    assert store_kind(empty) == "new"

    exported = tmp_path / "exported"
    sync_export([make(b"{}", key=KEY_A)], exported)
    store = open_store(exported)
    assert isinstance(store, DirStore) and store.get("default", KEY_A) is not None
    store.close()

    (exported / MARKER_FILE).unlink()  # a hand-made export without its marker
    assert store_kind(exported) == "export"
    store = open_store(exported, create=False)
    assert not (exported / MARKER_FILE).exists(), "reading does not write the marker"
    store.close()


def test_open_store_refuses_ambiguous_directories(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="not a directory"):
        open_store(tmp_path / "file")

    src = tmp_path / "src"
    src.mkdir()
    (src / "main.py").write_text("")
    with pytest.raises(StoreError, match=r"neither an LMDB store.*main\.py"):
        open_store(src)

    both = tmp_path / "both"
    LmdbStore(both).close()
    (both / MARKER_FILE).write_text("{}")
    with pytest.raises(StoreError, match="both an LMDB store"):
        open_store(both)

    with pytest.raises(StoreError, match="no store at"):
        open_store(tmp_path / "missing", create=False)


def test_a_full_write_backlog_fails_fast_and_close_waits_for_the_writer(tmp_path: Path) -> None:
    bound = 100_000
    store = DirStore(tmp_path / "rec", backlog_bytes=bound)
    started, release = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        assert release.wait(30)

    store._writer().submit(hold)  # white box: nothing public can hold the writer thread
    assert started.wait(10)
    futures = [store.submit(make(b"x" * 10_000, key=f"{i:032x}")) for i in range(30)]
    assert store.backlog.bytes <= bound
    refused = [f for f in futures if f.done()]
    assert refused and len(refused) < len(futures)
    error = refused[0].exception()
    assert isinstance(error, StoreError) and error.reason == "backlog"
    closer = threading.Thread(target=store.close, kwargs={"report_every_s": 0.01})
    closer.start()
    assert closer.is_alive()
    release.set()
    closer.join(30)
    assert not closer.is_alive() and store.backlog.jobs == 0
    assert DirStore(tmp_path / "rec").stats().entries == len(futures) - len(refused)


def test_candidates_follow_the_files(tmp_path: Path) -> None:
    store = DirStore(tmp_path / "rec")
    assert store.blocking_reads is True
    for i in range(0, 40, 2):
        store.put(chat_rec(i))
    store.put(chat_rec(7, path="/v1/responses"))
    wanted = chat_rec(31).request

    def best(found: list[dict[str, Any]]) -> dict[str, Any] | None:
        match = closest(wanted, found)
        return match[0] if match else None

    assert len(store.candidates("default", wanted, limit=3)) == 3
    found = store.candidates("default", wanted)
    assert len(found) == 20 and {endpoint(r) for r in found} == {endpoint(wanted)}
    assert best(found) == best([chat_rec(i).request for i in range(0, 40, 2)])  # as a full scan
    DirStore(tmp_path / "rec").put(chat_rec(31))  # another process adds the exact one
    assert best(store.candidates("default", wanted)) == wanted
    assert store.delete("default", chat_rec(31).key)
    assert wanted not in store.candidates("default", wanted)
    assert store.candidates("default", chat_rec(7, path="/v1/responses").request) == [
        chat_rec(7, path="/v1/responses").request
    ]
    assert store.candidates("nobody", wanted) == []
