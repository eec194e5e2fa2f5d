"""Auditing a store, an export directory or any file for credentials (`llmreel cache audit`).

`core.audit` says what a credential looks like; this module says where to look. An LMDB store
is read value by value and decompressed: recordings through `records.unpack`, the other
databases through the decoders the caller passes (storage cannot know the log's format). Its
data file is then scanned as raw bytes, compressed values included, because deleted and
overwritten records stay in freed pages until LMDB reuses them, and travel with the file.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from llmreel.core.audit import Finding, find, find_bytes, find_in_query, line_of
from llmreel.storage.compress import embedded
from llmreel.storage.lmdbstore import LmdbStore, StoreError, parse_entry_key
from llmreel.storage.records import RecordError, Recording, unpack

__all__ = ["FREED_SPACE", "Audit", "Decoder", "Leak", "audit"]

#: Turns a stored value of one database into the text to scan, e.g. by decompressing it.
Decoder = Callable[[bytes], bytes]
#: Where a finding that only the raw data file holds is reported.
FREED_SPACE = "data.mdb, in space freed by deleted or overwritten records"


@dataclass(frozen=True, slots=True)
class Leak:
    """A finding and where it is."""

    finding: Finding
    place: str
    """`path:line:column` in a file; in a store, the part of a recording or the database."""
    entry: tuple[str, str, int] | None = None
    """(namespace, key, seq) of the recording holding it, in an LMDB store."""


@dataclass(frozen=True, slots=True)
class Audit:
    leaks: list[Leak]
    scanned: str
    """What was read, for the report: "12 recordings", "3 files"."""


def audit(
    target: Path, allow: frozenset[str] = frozenset(), decoders: Mapping[bytes, Decoder] = {}
) -> Audit:
    """Credential-shaped strings in an LMDB store, or in a file or every file under a directory.

    `decoders` read the values of a store's other databases (by name, e.g. `b"log"`); values
    they cannot read, and those of databases without one, are scanned as they are. Raises
    `StoreError` when something cannot be read.
    """
    if target.is_dir() and (target / "data.mdb").exists():
        return _audit_lmdb(target, allow, decoders)
    return _audit_files(target, allow)


def _audit_files(root: Path, allow: frozenset[str]) -> Audit:
    files = [root] if root.is_file() else sorted(_walk(root))
    leaks: list[Leak] = []
    for file in files:
        try:
            text = file.read_bytes().decode("utf-8", "replace")
        except OSError as exc:
            raise StoreError(f"cannot read {file}: {exc}") from exc
        for finding in find(text, allow):
            line, column = line_of(text, finding.offset)
            leaks.append(Leak(finding, f"{file}:{line}:{column}"))
    return Audit(leaks, f"{len(files)} files")


def _walk(root: Path) -> Iterator[Path]:
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d != ".git")
        for name in names:
            yield Path(directory) / name


def _audit_lmdb(root: Path, allow: frozenset[str], decoders: Mapping[bytes, Decoder]) -> Audit:
    leaks: list[Leak] = []
    count = 0
    with LmdbStore(root, create=False) as store:
        for raw_key, value in store.iter_raw(b"entries"):
            count += 1
            entry = parse_entry_key(raw_key)
            try:
                rec = unpack(value)
            except RecordError:
                text = value.decode("utf-8", "replace")
                leaks.extend(Leak(f, "undecodable entry", entry) for f in find(text, allow))
                continue
            query = find_in_query(rec.request.get("query", []), allow)
            leaks.extend(Leak(f, "request", entry) for f in query)
            for part, text in _record_parts(rec):
                leaks.extend(Leak(f, part, entry) for f in find(text, allow))
        for db in (b"log", b"used", b"meta"):
            decode = decoders.get(db)
            for raw_key, value in store.iter_raw(db):
                text = (raw_key + b"\n" + _decoded(decode, value)).decode("utf-8", "replace")
                where = f"{db.decode()} database, record {raw_key[:40]!r}"
                leaks.extend(Leak(f, where) for f in find(text, allow))
    # Report what only the file holds, once per credential.
    seen = {leak.finding.fingerprint for leak in leaks}
    for finding in _scan_data_file(root / "data.mdb", allow):
        if finding.fingerprint not in seen:
            seen.add(finding.fingerprint)
            leaks.append(Leak(finding, FREED_SPACE))
    return Audit(leaks, f"{count} recordings")


def _decoded(decode: Decoder | None, value: bytes) -> bytes:
    if decode is None:
        return value
    try:
        return decode(value)
    except ValueError:  # not in the format the decoder knows: scan it as it is
        return value


def _record_parts(rec: Recording) -> list[tuple[str, str]]:
    parts = [("request", json.dumps(rec.request, ensure_ascii=False))]
    parts += [(f"response header {name}", f"{name}: {value}") for name, value in rec.headers]
    parts.append(("response body", rec.body.decode("utf-8", "replace")))
    return parts


def _scan_data_file(path: Path, allow: frozenset[str]) -> list[Finding]:
    """Findings in the raw bytes of a database file, and inside every compressed value in it."""
    try:
        with path.open("rb") as file:
            if os.fstat(file.fileno()).st_size == 0:
                return []
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
                findings = find_bytes(data, allow)
                for content in embedded(data):
                    findings += find_bytes(content, allow)
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc
    return findings
