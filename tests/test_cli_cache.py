"""`llmreel cache ...` through click's CliRunner, on LMDB stores and export directories."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from llmreel.cli.cache import cache, parse_duration
from llmreel.core.keys import canonical_request, request_digest
from llmreel.log import packing
from llmreel.log.packing import pack_exchange
from llmreel.storage.dirstore import DirStore
from llmreel.storage.export import MARKER_FILE, entry_path
from llmreel.storage.lmdbstore import LmdbStore, entry_key
from llmreel.storage.records import Recording
from tests.test_exchangelog import OPENAI_KEY, make_exchange
from tests.test_export import FIXTURES, SSE, event_chunks

DAY = 86400.0


def recording(
    content: str, namespace: str = "default", *, age_days: float = 0, **kw: Any
) -> Recording:
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]})
    request = canonical_request(
        "POST", "https", "api.openai.com", 443, "/v1/chat/completions", [], [], body.encode()
    )
    response = (FIXTURES / "openai-chat-stream.sse").read_bytes()
    fields: dict[str, Any] = {
        "key": request_digest(request),
        "namespace": namespace,
        "request": request,
        "status": 200,
        "headers": [("content-type", SSE)],
        "body": response,
        "chunks": event_chunks(response),
        "recorded_at": time.time() - age_days * DAY,
        "provider": "openai",
        "model": "gpt-4o-mini",
        "usage": {"input": 10, "output": 2, "cache_read": 0, "cache_write": 0, "reasoning": 0},
    }
    fields.update(kw)
    return Recording(**fields)


@pytest.fixture
def lmdb(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    with LmdbStore(path) as store:
        store.put(recording("hello"))
        store.put(recording("old one", age_days=40))
        store.put(recording("other", namespace="tests/test_b.py::test_c"))
    return path


def run(*args: str, ok: bool = True) -> Result:
    result = CliRunner().invoke(cache, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def keys_of(path: Path) -> list[str]:
    with LmdbStore(path, create=False) as store:
        return [r.key for r in store.iter()]


def test_parse_duration() -> None:
    assert parse_duration("30d") == 30 * DAY
    assert parse_duration("1d12h") == 1.5 * DAY
    assert parse_duration("90m") == 5400 and parse_duration("2w") == 14 * DAY
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("30 days")


def test_export_import_round_trip_is_byte_identical(lmdb: Path, tmp_path: Path) -> None:
    out = tmp_path / "recordings"
    result = run("export", str(out), "--store", str(lmdb))
    assert "exported 3 recordings" in result.output and "3 written" in result.output
    assert (out / MARKER_FILE).exists()
    files = sorted(out.rglob("*.json"))
    snapshot = {p: (p.read_bytes(), p.stat().st_ino, p.stat().st_mtime_ns) for p in files}

    assert (
        "0 written, 3 unchanged, 0 removed" in run("export", str(out), "--store", str(lmdb)).output
    )
    assert {p: (p.read_bytes(), p.stat().st_ino, p.stat().st_mtime_ns) for p in files} == snapshot

    rebuilt = tmp_path / "rebuilt"
    assert "3 new" in run("import", str(out), "--store", str(rebuilt)).output
    again = tmp_path / "again"
    run("export", str(again), "--store", str(rebuilt))
    for file in files:
        assert (again / file.relative_to(out)).read_bytes() == snapshot[file][0]
    with LmdbStore(lmdb) as a, LmdbStore(rebuilt) as b:
        assert list(a.iter()) == list(b.iter())


def test_export_removes_files_of_deleted_recordings(lmdb: Path, tmp_path: Path) -> None:
    out = tmp_path / "recordings"
    run("export", str(out), "--store", str(lmdb))
    victim = keys_of(lmdb)[0]
    run("rm", victim, "--store", str(lmdb))
    assert (
        "0 written, 2 unchanged, 1 removed" in run("export", str(out), "--store", str(lmdb)).output
    )
    assert not list(out.rglob(f"{victim}.json"))


def test_export_refuses_odd_targets(lmdb: Path, tmp_path: Path) -> None:
    result = run("export", str(lmdb), "--store", str(lmdb), ok=False)
    assert result.exit_code == 2 and "the store itself" in result.output
    other = tmp_path / "other"
    LmdbStore(other).close()
    assert "is an LMDB store" in run("export", str(other), "--store", str(lmdb), ok=False).output
    src = tmp_path / "src"
    src.mkdir()
    (src / "app.py").write_text("")
    result = run("export", str(src), "--store", str(lmdb), ok=False)
    assert result.exit_code == 1 and "neither an LMDB store" in result.output
    assert not (src / MARKER_FILE).exists()


def test_import_merges_or_replaces(lmdb: Path, tmp_path: Path) -> None:
    out = tmp_path / "recordings"
    with DirStore(out) as store:
        store.put(recording("from the export"))
        store.put(recording("hello", usage={"input": 1}))
    result = run("import", str(out), "--store", str(lmdb))
    assert "imported 2 recordings" in result.output and "1 new, 1 replaced" in result.output
    assert len(keys_of(lmdb)) == 4
    with LmdbStore(lmdb) as store:
        store.write_raw([(b"used", entry_key("default", recording("old one").key), b"1")])
    result = run("import", str(out), "--store", str(lmdb), "--replace")
    assert "2 removed" in result.output
    assert sorted(keys_of(lmdb)) == sorted(
        [recording("from the export").key, recording("hello").key]
    )
    with LmdbStore(lmdb) as store:
        assert list(store.iter_raw(b"used")) == [], "last-use times of removed entries go too"


def test_store_may_be_an_export_directory(lmdb: Path, tmp_path: Path) -> None:
    out = tmp_path / "recordings"
    run("export", str(out), "--store", str(lmdb))
    listing = run("ls", "--store", str(out), "--json").output
    assert len(json.loads(listing)) == 3
    stats = json.loads(run("stats", "--store", str(out), "--json").output)
    assert stats["entries"] == 3 and stats["by_namespace"]["default"]["entries"] == 2
    assert run("verify", "--store", str(out)).exit_code == 0


def test_ls_and_stats(lmdb: Path) -> None:
    text = run("ls", "--store", str(lmdb)).output
    header, *rows = text.splitlines()
    assert header.split()[:4] == ["KEY", "NAMESPACE", "MODEL", "REQUEST"]
    assert len(rows) == 3 and "POST https://api.openai.com/v1/chat/completions" in rows[0]
    assert "stream" in rows[0]
    only = json.loads(
        run("ls", "--store", str(lmdb), "--namespace", "tests/test_b.py::test_c", "--json").output
    )
    assert [r["namespace"] for r in only] == ["tests/test_b.py::test_c"]
    assert only[0]["usage"]["input"] == 10 and only[0]["stream"] is True
    stats = run("stats", "--store", str(lmdb)).output
    assert "entries: 3" in stats and "gpt-4o-mini" in stats and "PROVIDER" in stats


def test_show_by_prefix(lmdb: Path) -> None:
    key = recording("hello").key
    doc = json.loads(run("show", key[:6], "--store", str(lmdb)).output)
    assert doc["key"] == key and doc["request"]["body"]["messages"][0]["content"] == "hello"
    assert doc["response"]["body"]["sse"]["events"][0]["data"]["object"] == "chat.completion.chunk"
    missing = run("show", "zzzz", "--store", str(lmdb), ok=False)
    assert missing.exit_code == 1 and "no recording's key starts with 'zzzz'" in missing.output


def test_show_and_rm_refuse_ambiguity(tmp_path: Path) -> None:
    store_path = tmp_path / "s"
    with LmdbStore(store_path) as store:
        store.put(recording("same", namespace="a"))
        store.put(recording("same", namespace="b"))
        store.put(recording("x", key="ab" + "0" * 30))
        store.put(recording("y", key="ab" + "1" * 30))
    key = recording("same").key
    result = run("show", key, "--store", str(store_path), ok=False)
    assert "2 recordings have this key" in result.output and "--namespace" in result.output
    assert run("show", key, "--namespace", "b", "--store", str(store_path)).exit_code == 0
    result = run("rm", "ab", "--store", str(store_path), ok=False)
    assert "is the start of 2 keys" in result.output
    result = run("rm", key, "nope", "--store", str(store_path), ok=False)
    assert result.exit_code == 1 and len(keys_of(store_path)) == 4, "all or nothing"
    result = run("rm", key, "--store", str(store_path))
    assert result.output.count("removed") == 2 and len(keys_of(store_path)) == 2


def test_prune(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with LmdbStore(path) as store:
        store.put(recording("fresh"))
        store.put(recording("old", age_days=40))
        store.put(recording("old but used", age_days=40))
        store.put(recording("other ns", namespace="tmp", age_days=1))
        store.write_raw([(b"used", entry_key("default", recording("old but used").key),
                          str(int(time.time() - DAY)).encode())])  # fmt: skip
    result = run("prune", "--store", str(path), ok=False)
    assert result.exit_code == 2 and "say what to prune" in result.output

    dry = run("prune", "--older-than", "30d", "--dry-run", "--store", str(path)).output
    assert "would remove 2 recordings" in dry and len(keys_of(path)) == 4

    result = run("prune", "--unused-since", "7d", "--store", str(path)).output
    assert "removed 1 recordings" in result and recording("old").key not in keys_of(path)
    run("prune", "--namespace", "tmp", "--store", str(path))
    assert sorted(keys_of(path)) == sorted([recording("fresh").key, recording("old but used").key])
    run("prune", "--older-than", "30d", "--store", str(path))
    assert keys_of(path) == [recording("fresh").key]


def test_prune_unused_needs_an_lmdb_store(lmdb: Path, tmp_path: Path) -> None:
    out = tmp_path / "recordings"
    run("export", str(out), "--store", str(lmdb))
    result = run("prune", "--unused-since", "7d", "--store", str(out), ok=False)
    assert "don't track when recordings were last used" in result.output
    assert "removed 1 recordings" in run("prune", "--older-than", "30d", "--store", str(out)).output


def test_verify_catches_a_tampered_key(lmdb: Path, tmp_path: Path) -> None:
    assert "3 recordings verified" in run("verify", "--store", str(lmdb)).output
    with LmdbStore(lmdb) as store:
        bad = recording("hello")
        bad.request["body"]["messages"][0]["content"] = "tampered"
        store.put(bad)
        store.write_raw([(b"entries", entry_key("default", "f" * 32), b"LRR1garbage")])
    result = run("verify", "--store", str(lmdb), ok=False)
    assert result.exit_code == 1
    assert f"default/{bad.key}: key {bad.key} does not match its request" in result.output
    assert f"default/{'f' * 32}: does not decode" in result.output

    out = tmp_path / "recordings"
    with DirStore(out) as store:
        store.put(recording("fine"))
        store.put(recording("moved"))
    victim = out / entry_path("default", recording("moved").key)
    victim.rename(victim.with_name("0" * 32 + ".json"))
    result = run("verify", "--store", str(out), ok=False)
    assert "stored as default/" + "0" * 32 in result.output


def test_read_commands_do_not_create_stores(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("ls", "--store", str(empty), ok=False)
    assert "no recordings at" in result.output and list(empty.iterdir()) == []
    assert "no recordings at" in run("stats", "--store", str(tmp_path / "missing"), ok=False).output


SECRETS = {
    "sk-proj": "sk-proj-" + "Ab1" * 20,
    "sk-ant": "sk-ant-api03-" + "Xy9_" * 20 + "AA",
    "AIza": "AIzaSyD" + "k3J" * 10 + "abcd",
    "Bearer": "Bearer eyabc" + "Q7z" * 10,
}


@pytest.mark.parametrize("kind", list(SECRETS))
def test_audit_finds_credentials_in_lmdb_and_exports(tmp_path: Path, kind: str) -> None:
    secret = SECRETS[kind]
    path = tmp_path / "s"
    with LmdbStore(path) as store:
        store.put(recording("clean"))
    assert "audit passed" in run("audit", "--store", str(path)).output

    with LmdbStore(path) as store:
        store.put(recording(f"my key is {secret}"))
    result = run("audit", "--store", str(path), ok=False)
    assert result.exit_code == 1 and "default/" in result.output and ": request:" in result.output
    assert secret not in result.output and secret.split()[-1] not in result.output
    assert "[redacted " in result.output

    out = tmp_path / "export"
    exported = run("export", str(out), "--store", str(path), ok=False)
    assert exported.exit_code == 1 and "not exported" in exported.output
    assert secret not in exported.output
    fingerprint = result.output.split("[redacted ")[1].split("]")[0]
    run("export", str(out), "--store", str(path), "--allow", fingerprint)
    result = run("audit", str(out), ok=False)
    assert result.exit_code == 1 and ".json:" in result.output and secret not in result.output
    assert run("audit", str(out), "--allow", fingerprint).exit_code == 0


@pytest.mark.parametrize("size", ["small", "compressed"])
def test_audit_reports_secrets_left_in_freed_pages(tmp_path: Path, size: str) -> None:
    path = tmp_path / "s"
    secret = SECRETS["sk-proj"]
    # Under 1 KiB a recording is stored as it is; from 1 KiB on it is compressed, and only
    # decompressing what lies in freed space can find the key.
    content = "key " + secret + (" and more" * 200 if size == "compressed" else "")
    leaked = recording(content, body=b'{"ok":true}')
    with LmdbStore(path) as store:
        store.put(recording("clean"))
        store.put(leaked)
        store.delete("default", leaked.key)  # the last write: nothing can reuse the freed pages
    raw = (path / "data.mdb").read_bytes()
    assert (secret.encode() in raw) == (size == "small")
    result = run("audit", "--store", str(path), ok=False)
    assert result.exit_code == 1, result.output
    assert "data.mdb, in space freed by deleted or overwritten records: OpenAI API key" in result.output
    assert secret not in result.output


def test_audit_reads_compressed_log_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A log record written before its key's shape was known to the scrubber, as an older
    # llmreel would have: the body is compressed, so only a decompressing audit sees the key.
    monkeypatch.setattr(packing, "scrub_text", lambda text: text)
    ex = make_exchange("openai-chat", request_body=f"{'padding ' * 200} {OPENAI_KEY}".encode())
    value = pack_exchange(ex)
    assert OPENAI_KEY.encode() not in value
    path = tmp_path / "s"
    with LmdbStore(path) as store:
        store.write_raw([(b"log", ex.id.encode(), value)])
    result = run("audit", "--store", str(path), ok=False)
    assert f"log database, record {ex.id.encode()!r}: OpenAI API key" in result.output


def test_audit_scans_the_log_database_and_plain_files(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with LmdbStore(path) as store:
        store.write_raw([(b"log", b"0001", f"authorization: {SECRETS['Bearer']}".encode())])
    assert "log database" in run("audit", "--store", str(path), ok=False).output
    notes = tmp_path / "notes.txt"
    notes.write_text("line one\nexport GEMINI_API_KEY=" + SECRETS["AIza"] + "\n")
    result = run("audit", str(notes), ok=False)
    assert f"{notes}:2:23: Google API key [redacted" in result.output
    (tmp_path / "clean.txt").write_text("Bearer [redacted 1a2b3c4d] risk-assessment-guidelines-v2")
    assert run("audit", str(tmp_path / "clean.txt")).exit_code == 0


def test_audit_and_export_catch_credentials_in_old_recordings_query(tmp_path: Path) -> None:
    # Recorded before `api_token` was known to name a credential: the key held it, and the
    # recording's request still does. The value has no key shape; its name gives it away.
    old = recording("hello")
    old.request["query"] = [["alt", "sse"], ["api_token", "plainvalue0a1b2c3d4e"]]
    old.key = request_digest(old.request)
    path = tmp_path / "s"
    with LmdbStore(path) as store:
        store.put(old)
    result = run("audit", "--store", str(path), ok=False)
    assert f"default/{old.key}: request: credential in query parameter api_token" in result.output
    assert "plainvalue" not in result.output
    exported = run("export", str(tmp_path / "out"), "--store", str(path), ok=False)
    assert exported.exit_code == 1 and "credential in query parameter api_token" in exported.output
    fingerprint = result.output.split("[redacted ")[1].split("]")[0]
    assert run("audit", "--store", str(path), "--allow", fingerprint).exit_code == 0
