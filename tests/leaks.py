"""Hunting leaked secrets in a store: every byte of every file, and every value decompressed.

Recordings of 1 KiB or more and the log's bodies are stored compressed, so a search of the raw
files alone finds nothing in them. `readable` opens each stored value with the real decoders.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import orjson

from llmreel.log.packing import MAGIC_RAW, unpack_content
from llmreel.storage.lmdbstore import DATABASES, LmdbStore
from llmreel.storage.records import MAGIC, unpack


def readable(value: bytes) -> bytes:
    """A stored value as plain bytes: recordings and log records decompressed, others as they are."""
    if value.startswith(MAGIC):
        rec = unpack(value)
        fields = [rec.key, rec.namespace, rec.request, rec.headers, rec.provider, rec.model]
        return orjson.dumps(fields) + b"\n" + rec.body
    if value.startswith(MAGIC_RAW):
        return value + b"\n" + unpack_content(value)  # the head is plain JSON already
    return value


def plaintexts(root: Path) -> Iterator[tuple[str, bytes]]:
    """(where, content) for every file under `root`, then every value of its LMDB store, readable."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield str(path), path.read_bytes()
    if not (root / "data.mdb").exists():
        return
    with LmdbStore(root, create=False) as store:
        for db in DATABASES:
            for key, value in store.iter_raw(db):
                yield f"{db.decode()} database, {key[:40]!r}", key + b"\n" + readable(value)


def leaks(root: Path, secrets: Mapping[str, str]) -> list[tuple[str, str]]:
    """(secret's name, where) for each secret found in the store at `root`."""
    return [
        (name, where)
        for where, content in plaintexts(root)
        for name, secret in secrets.items()
        if secret.encode() in content
    ]
