"""The embeddings part of the UI's index: one row per embedded input, with its text and its
vector (float32 bytes), so that the embeddings page reads one table instead of the log.

`Indexer` calls `add` for every log record it indexes; rows of different models or dimensions
are kept apart by the (model, dim) the page selects on.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any, Final

from llmreel.log.record import record_unix
from llmreel.providers.embeddings import EMBEDDING_APIS, embedded
from llmreel.ui.rag import normalise

__all__ = ["DDL", "TABLES", "add", "forget_before"]

DDL: Final = """
CREATE TABLE IF NOT EXISTS emb(
    rowid INTEGER PRIMARY KEY,
    ex INTEGER NOT NULL, id TEXT NOT NULL, idx INTEGER NOT NULL, size INTEGER NOT NULL,
    model TEXT NOT NULL, dim INTEGER NOT NULL, unix REAL,
    namespace TEXT, run TEXT, text TEXT, norm TEXT, vec BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS emb_space ON emb(model, dim, rowid);
CREATE INDEX IF NOT EXISTS emb_id ON emb(id);
"""
TABLES: Final = ("emb",)


def add(conn: sqlite3.Connection, ex_rowid: int | None, record: Mapping[str, Any]) -> int:
    """Index the embedded inputs of `record` (read with `vectors=False`); returns how many."""
    api = str(record.get("api"))
    request, response = record.get("request_body"), record.get("response_body")
    if api not in EMBEDDING_APIS or not isinstance(request, dict) or not isinstance(response, dict):
        return 0
    items = embedded(api, request, response)
    model = str(record.get("model") or record.get("response_model") or "?")
    ident, unix = str(record.get("id")), record_unix(record)
    conn.executemany(
        "INSERT INTO emb(ex, id, idx, size, model, dim, unix, namespace, run, text, norm, vec)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        [
            (ex_rowid, ident, e.index, len(items), model, e.dim, unix, record.get("namespace"),
             record.get("run"), e.text, normalise(e.text) if e.text else None, e.vector)
            for e in items
        ],
    )  # fmt: skip
    return len(items)


def forget_before(conn: sqlite3.Connection, floor: str) -> None:
    """Drop the rows of exchanges the log pruned (ids below `floor`)."""
    conn.execute("DELETE FROM emb WHERE id < ?", (floor,))
