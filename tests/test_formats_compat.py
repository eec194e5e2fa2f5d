"""The stored formats do not drift: a store and an export made by an earlier llmreel still read
back to the same recordings and log records, and writing them again gives the same bytes.

The fixtures in tests/fixtures/formats were made once, by llmreel at commit e68c68d (see its
generate.py). A failure here means a format changed: bump its version and migrate instead.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from llmreel.cli.main import main
from llmreel.core.exchange import Exchange
from llmreel.core.wire import header
from llmreel.log.exchangelog import ExchangeLog
from llmreel.log.packing import pack_exchange, unpack_head, unpack_record
from llmreel.log.record import exchange_record
from llmreel.providers import Endpoint, Usage, summarize
from llmreel.storage.dirstore import DirStore
from llmreel.storage.export import dumps, from_export, loads, to_export
from llmreel.storage.lmdbstore import LmdbStore
from llmreel.storage.records import Recording, pack, unpack

FORMATS = Path(__file__).parent / "fixtures" / "formats"


def _load(name: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads((FORMATS / name).read_text())
    return entries


RECORDINGS = _load("recordings.json")
LOG = _load("log.json")


def _recording(fields: dict[str, Any]) -> Recording:
    return Recording(
        **{
            **fields,
            "headers": [(name, value) for name, value in fields["headers"]],
            "chunks": [(t, n) for t, n in fields["chunks"]],
            "body": base64.b64decode(fields["body"]),
        }
    )


def _exchange(fields: dict[str, Any]) -> Exchange:
    endpoint = Endpoint(**fields["endpoint"])
    response_body = base64.b64decode(fields["response_body"])
    response_headers = [(name, value) for name, value in fields["response_headers"]]
    return Exchange(
        **{
            **fields,
            "endpoint": endpoint,
            "usage": Usage(**fields["usage"]) if fields["usage"] is not None else None,
            "request_headers": [(name, value) for name, value in fields["request_headers"]],
            "response_headers": response_headers,
            "request_body": base64.b64decode(fields["request_body"]),
            "response_body": response_body,
            # As the recorder does: the summary is read from the response body.
            "summary": summarize(
                endpoint, response_body, header(response_headers, "content-type") or ""
            ),
        }
    )


def _expected_recordings() -> dict[tuple[str, str, int], Recording]:
    recs = (_recording(entry["recording"]) for entry in RECORDINGS)
    return {(rec.namespace, rec.key, rec.seq): rec for rec in recs}


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("entry", RECORDINGS, ids=lambda e: e["recording"]["key"][:4])
def test_packed_recording_reads_back_and_packs_to_the_same_bytes(entry: dict[str, Any]) -> None:
    packed = base64.b64decode(entry["packed"])
    expected = _recording(entry["recording"])
    assert unpack(packed) == expected
    assert pack(expected) == packed
    assert pack(unpack(packed)) == packed
    assert unpack(packed, request=False).request == {}


@pytest.mark.parametrize("entry", LOG, ids=lambda e: e["exchange"]["id"])
def test_packed_log_entry_reads_back_and_packs_to_the_same_bytes(entry: dict[str, Any]) -> None:
    packed = base64.b64decode(entry["packed"])
    ex = _exchange(entry["exchange"])
    assert pack_exchange(ex) == packed
    record = unpack_record(packed)
    assert record == entry["record"]
    head = unpack_head(packed)
    assert unpack_record(packed, heavy=False) == head
    assert {k: record[k] for k in head if k != "finish_reason"} == {
        k: v for k, v in head.items() if k != "finish_reason"
    }
    # The JSONL sink writes the same record, made eagerly.
    assert orjson.loads(orjson.dumps(exchange_record(ex), default=str)) == record


def test_store_made_earlier_reads_back_to_the_same_recordings_and_log(tmp_path: Path) -> None:
    copy = tmp_path / "store"
    shutil.copytree(FORMATS / "store", copy)
    store = LmdbStore(copy, create=False)
    try:
        expected = _expected_recordings()
        found = {(rec.namespace, rec.key, rec.seq): rec for rec in store.iter()}
        assert found == expected
        raw = sorted(value for _, value in store.iter_raw(b"entries"))
        assert raw == sorted(base64.b64decode(entry["packed"]) for entry in RECORDINGS)

        by_id = {entry["exchange"]["id"]: entry for entry in LOG}
        stored = dict(store.iter_raw(b"log"))
        assert {k.decode(): v for k, v in stored.items()} == {
            i: base64.b64decode(e["packed"]) for i, e in by_id.items()
        }
        records = list(ExchangeLog(store, retention_s=None).iter(newest_first=False, content=True))
        assert records == [by_id[i]["record"] for i in sorted(by_id)]
    finally:
        store.close()


def test_export_made_earlier_reads_back_and_exports_to_the_same_bytes(tmp_path: Path) -> None:
    expected = _expected_recordings()
    export = FORMATS / "export"
    files = [p for p in export.rglob("*.json") if p.name != "llmreel-export.json"]
    assert len(files) == len(expected)
    for path in files:
        data = path.read_bytes()
        rec = from_export(loads(data))
        assert rec == expected[(rec.namespace, rec.key, rec.seq)]
        assert dumps(to_export(rec)) == data
    with DirStore(export, create=False) as source:
        assert {(r.namespace, r.key, r.seq): r for r in source.iter()} == expected

    # The whole directory, file names and marker included, from the store made earlier.
    store = tmp_path / "store"
    shutil.copytree(FORMATS / "store", store)
    result = CliRunner().invoke(
        main, ["cache", "export", str(tmp_path / "export"), "--store", str(store)]
    )
    assert result.exit_code == 0, result.output
    assert _tree(tmp_path / "export") == _tree(export)
