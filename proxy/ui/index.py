"""The UI's index of the exchange log: one SQLite file beside the store, kept up to date by a
thread that reads new log entries, links them into threads and indexes their text.

The log (LMDB) stays the source of truth; the index is derived and can be deleted at any time
(it is rebuilt on the next start). It holds what the pages list and count, so a page never
decodes 100,000 records: each exchange's head fields, its thread, its step (only what is new
since the call it continues, see `llmreel.log.linking`), a full-text index of that new text
(FTS5, trigram: substring search in any case, like `log ls --grep`) and a copy of the labels.

All of this happens in the UI's process, off the proxy's event loop: the proxy only writes log
entries as it always did.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import orjson

from llmreel.core.ids import id_floor, id_time
from llmreel.log.exchangelog import LOG_DB, ExchangeLog
from llmreel.log.labels import Labels
from llmreel.log.linking import Fingerprint, Turn, fingerprint, messages_of
from llmreel.log.packing import LogRecordError
from llmreel.log.record import record_unix
from llmreel.providers import Message, conversation
from llmreel.ui import embindex

__all__ = ["INDEX_FILE", "Index", "Indexer", "message_dict"]

log = logging.getLogger(__name__)

INDEX_FILE: Final = "ui-index.sqlite3"
#: Bump to rebuild every index made by an earlier version.
SCHEMA: Final = 3
#: Entries may be committed a little after newer ones (batched writers, several proxies): look
#: back this far for ids not indexed yet.
LOOKBACK_S: Final = 10.0
_BATCH: Final = 500
#: A text longer than this is kept cut in a step (the exchange page shows all of it).
MAX_STEP_TEXT: Final = 64 * 1024
_IN_CHUNK: Final = 500

_DDL: Final = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS ex(
    rowid INTEGER PRIMARY KEY,
    id TEXT UNIQUE NOT NULL,
    time TEXT, unix REAL,
    model TEXT, provider TEXT, api TEXT, operation TEXT, cache TEXT,
    status INTEGER, error TEXT, error_type TEXT,
    namespace TEXT, run TEXT, session TEXT, stream INTEGER,
    input_tokens INTEGER, output_tokens INTEGER, cost_usd REAL, duration_s REAL, ttfc_s REAL,
    thread TEXT NOT NULL, step INTEGER NOT NULL, parent TEXT, branch INTEGER NOT NULL,
    children INTEGER NOT NULL DEFAULT 0, fork INTEGER NOT NULL DEFAULT 0,
    cont BLOB, cont_len INTEGER NOT NULL
);
-- Kept apart so that the rows `ex` scans for totals stay narrow.
CREATE TABLE IF NOT EXISTS steps(rowid INTEGER PRIMARY KEY, doc BLOB NOT NULL);
-- The values the filters offer (models, providers, namespaces), without a scan.
CREATE TABLE IF NOT EXISTS facets(name TEXT, value TEXT, PRIMARY KEY (name, value)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ex_thread ON ex(thread, id);
CREATE INDEX IF NOT EXISTS ex_cont ON ex(cont);
CREATE INDEX IF NOT EXISTS ex_unix ON ex(unix);
CREATE INDEX IF NOT EXISTS ex_run ON ex(run);
-- Covers the totals of an unfiltered (or cache-filtered) list: an index-only scan.
CREATE INDEX IF NOT EXISTS ex_totals ON ex(cache, status, error, input_tokens, output_tokens, cost_usd, duration_s);
CREATE TABLE IF NOT EXISTS threads(
    id TEXT PRIMARY KEY,
    steps INTEGER NOT NULL, branches INTEGER NOT NULL,
    first_id TEXT, last_id TEXT, first_time TEXT, last_time TEXT, first_unix REAL, last_unix REAL,
    models TEXT NOT NULL, cost_usd REAL NOT NULL, input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL, run TEXT, session TEXT, namespace TEXT, title TEXT
);
CREATE INDEX IF NOT EXISTS threads_last ON threads(last_id);
CREATE TABLE IF NOT EXISTS labels(
    target TEXT PRIMARY KEY, kind TEXT, id TEXT, label TEXT, note TEXT, time TEXT
);
CREATE INDEX IF NOT EXISTS labels_label ON labels(label);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(text, tokenize='trigram');
"""


class Index:
    """The index file of one store (created 0600: it holds prompt text)."""

    def __init__(self, store_path: str | os.PathLike[str]) -> None:
        self.path = Path(store_path) / INDEX_FILE
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self.path.chmod(0o600)
        with self.connect() as conn:
            version = self._version(conn)
            if version is not None and version != SCHEMA:
                self._drop(conn)
            conn.executescript(_DDL + embindex.DDL)
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA),))

    def connect(self) -> sqlite3.Connection:
        """A new connection (one per thread). WAL: readers never wait for the indexer."""
        conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    @staticmethod
    def _version(conn: sqlite3.Connection) -> int | None:
        try:
            row = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.OperationalError:
            return None
        return int(row[0]) if row else None

    @staticmethod
    def _drop(conn: sqlite3.Connection) -> None:
        for table in ("meta", "ex", "steps", "facets", "threads", "labels", "fts", *embindex.TABLES):  # fmt: skip
            conn.execute(f"DROP TABLE IF EXISTS {table}")


class Indexer:
    """Brings an `Index` up to date with a store's log, now (`catch_up`) or in a thread (`start`)."""

    def __init__(
        self,
        index: Index,
        exchange_log: ExchangeLog,
        labels: Labels,
        *,
        interval_s: float = 0.25,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.index = index
        self.log = exchange_log
        self.labels = labels
        self.interval_s = interval_s
        self._clock = clock
        self._conn = index.connect()
        self._lock = threading.Lock()  # one indexing pass at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    # --- running ------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="llmreel-ui-indexer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._conn.close()

    def _loop(self) -> None:
        last_labels = 0.0
        while not self._stop.is_set():
            try:
                self.catch_up()
                if self._clock() - last_labels > 2.0:
                    self.sync_labels()
                    last_labels = self._clock()
                self.error = None
            except Exception as exc:  # noqa: BLE001 - the UI keeps serving what is indexed
                if self.error != str(exc):
                    log.warning("indexing the exchange log failed: %s", exc)
                self.error = str(exc)
            self._stop.wait(self.interval_s)

    # --- indexing -----------------------------------------------------------------------------

    def catch_up(self, *, should_stop: Callable[[], bool] | None = None) -> int:
        """Index every log entry not indexed yet; returns how many were added."""
        with self._lock:
            return self._catch_up(should_stop or self._stop.is_set)

    def _catch_up(self, should_stop: Callable[[], bool]) -> int:
        conn = self._conn
        row = conn.execute("SELECT max(id) FROM ex").fetchone()
        newest = row[0] if row else None
        start = id_floor(id_time(newest) - LOOKBACK_S).encode() if newest else None
        known = {
            r[0]
            for r in conn.execute("SELECT id FROM ex WHERE id >= ?", ((start or b"").decode(),))
        }
        added: list[str] = []
        for key, value in self.log.store.iter_raw(LOG_DB, start=start):
            ident = key.decode("ascii", "replace")
            if ident in known:
                continue
            try:
                record = self.log.record(value, vectors=False)  # embindex reads them packed
            except (LogRecordError, orjson.JSONDecodeError, ValueError) as exc:
                log.warning("skipping unreadable log entry %s: %s", ident, exc)
                known.add(ident)
                continue
            self._add(conn, record)
            added.append(ident)
            if len(added) % _BATCH == 0:
                self._commit(added[-_BATCH:])
                if should_stop():
                    break
        if len(added) % _BATCH:
            self._commit(added[-(len(added) % _BATCH) :])
        self._forget_pruned()
        return len(added)

    def _commit(self, ids: list[str]) -> None:
        # Readers (the pages, the event stream) see the batch from here on.
        self._conn.commit()

    def _forget_pruned(self) -> None:
        # Retention deleted the oldest log entries (labelled ones stay): drop their index rows.
        first = next(iter(self.log.store.iter_raw(LOG_DB)), None)
        if first is None:
            return
        floor = first[0].decode()
        with self._conn:
            for table in ("fts", "steps"):
                self._conn.execute(
                    f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM ex WHERE id < ?)",
                    (floor,),
                )
            self._conn.execute("DELETE FROM ex WHERE id < ?", (floor,))
            embindex.forget_before(self._conn, floor)

    def _add(self, conn: sqlite3.Connection, record: Mapping[str, Any]) -> None:
        conv = conversation(record)
        fp = fingerprint(record, conv)
        ident = str(record.get("id"))
        parent = _parent(conn, fp, ident)
        session = record.get("session")
        if isinstance(session, str) and session:
            thread_id = "session:" + session
        elif parent is not None:
            thread_id = parent["thread"]
        else:
            thread_id = ident
        thread = conn.execute("SELECT * FROM threads WHERE id = ?", (thread_id,)).fetchone()
        steps = thread["steps"] if thread else 0
        branches = thread["branches"] if thread else 0
        fork = parent is not None and parent["children"] > 0
        if fork:
            branches += 1
            branch = branches
        else:
            branch = parent["branch"] if parent is not None else 0
        matched = parent["cont_len"] if parent is not None else 0
        new_turns = fp.turns[matched:]
        step = _step_doc(record, new_turns, fp.answer)
        model = record.get("model") or record.get("response_model")
        cost = record.get("cost_usd") if isinstance(record.get("cost_usd"), int | float) else None
        billed = record.get("cache") not in ("hit", "offline_miss")
        cur = conn.execute(
            "INSERT INTO ex(id, time, unix, model, provider, api, operation, cache, status, error,"
            " error_type, namespace, run, session, stream, input_tokens, output_tokens, cost_usd,"
            " duration_s, ttfc_s, thread, step, parent, branch, fork, cont, cont_len)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (ident, record.get("time"), record_unix(record) or id_time(ident),
             model, record.get("provider"), record.get("api"), record.get("operation"),
             record.get("cache"), _int(record.get("status")), record.get("error"),
             record.get("error_type"), record.get("namespace"), record.get("run"), session or None,
             int(bool(record.get("stream"))), _int(record.get("input_tokens")),
             _int(record.get("output_tokens")), cost, _num(record.get("duration_s")),
             _num(record.get("ttfc_s")), thread_id, steps + 1, parent["id"] if parent else None,
             branch, int(fork), fp.continuation, fp.length),
        )  # fmt: skip
        conn.execute("INSERT INTO steps VALUES (?, ?)", (cur.lastrowid, orjson.dumps(step)))
        embindex.add(conn, cur.lastrowid, record)
        conn.execute(
            "INSERT INTO fts(rowid, text) VALUES (?, ?)", (cur.lastrowid, _text(step, record))
        )
        conn.executemany(
            "INSERT OR IGNORE INTO facets VALUES (?, ?)",
            [(name, record.get(name)) for name in ("provider", "namespace") if record.get(name)]
            + ([("model", model)] if model else []),
        )
        if parent is not None:
            conn.execute("UPDATE ex SET children = children + 1 WHERE id = ?", (parent["id"],))
        models = orjson.loads(thread["models"]) if thread else []
        if model and model not in models:
            models.append(model)
        in_tokens = _int(record.get("input_tokens")) or 0 if billed else 0
        out_tokens = _int(record.get("output_tokens")) or 0 if billed else 0
        if thread is None:
            conn.execute(
                "INSERT INTO threads VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (thread_id, 1, branches, ident, ident, record.get("time"), record.get("time"),
                 record_unix(record), record_unix(record), orjson.dumps(models).decode(),
                 (cost or 0.0) if billed else 0.0, in_tokens, out_tokens, record.get("run"),
                 session or None, record.get("namespace"), _title(new_turns)),
            )  # fmt: skip
        else:
            conn.execute(
                "UPDATE threads SET steps = steps + 1, branches = ?, last_id = ?, last_time = ?,"
                " last_unix = ?, models = ?, cost_usd = cost_usd + ?, input_tokens = input_tokens + ?,"
                " output_tokens = output_tokens + ? WHERE id = ?",
                (branches, ident, record.get("time"), record_unix(record), orjson.dumps(models).decode(),
                 (cost or 0.0) if billed else 0.0, in_tokens, out_tokens, thread_id),
            )  # fmt: skip

    def sync_labels(self) -> None:
        """Copy the store's labels into the index (they are few; a full copy is simplest)."""
        rows = [
            (target.key.decode(), target.kind, target.id, value.label, value.note, value.time)
            for target, value in self.labels.items()
        ]
        with self._lock, self._conn:
            self._conn.execute("DELETE FROM labels")
            self._conn.executemany("INSERT INTO labels VALUES (?,?,?,?,?,?)", rows)


def _parent(conn: sqlite3.Connection, fp: Fingerprint, ident: str) -> sqlite3.Row | None:
    """The latest earlier exchange whose conversation and answer the longest prefix of `fp` is."""
    best: sqlite3.Row | None = None
    prefixes = list(fp.prefixes)
    for i in range(0, len(prefixes), _IN_CHUNK):
        chunk = prefixes[i : i + _IN_CHUNK]
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(
            f"SELECT id, thread, cont_len, branch, children FROM ex WHERE cont IN ({marks})"
            " AND id < ?",
            (*chunk, ident),
        ):
            if best is None or (row["cont_len"], row["id"]) > (best["cont_len"], best["id"]):
                best = row
    return best


def message_dict(message: Message) -> dict[str, Any]:
    """A message as the API shows it: its role and parts (kind, text, name, call_id, is_error)."""
    return {
        "role": message.role,
        "parts": [
            {"kind": p.kind, "text": p.text, "name": p.name, "call_id": p.call_id,
             "is_error": p.is_error}
            for p in message.parts
        ],
    }  # fmt: skip


def _step_doc(
    record: Mapping[str, Any], new: Iterable[Turn], answer: Iterable[Turn]
) -> dict[str, Any]:
    new_messages = [message_dict(_cut(m)) for m in messages_of(new)]
    texts = [t.part.text for t in answer if t.part.kind == "text"]
    calls = [
        {"id": t.part.call_id, "name": t.part.name, "arguments": t.part.text[:MAX_STEP_TEXT]}
        for t in answer
        if t.part.kind == "tool_call"
    ]
    return {
        "new_messages": new_messages,
        "answer": "\n".join(texts)[:MAX_STEP_TEXT] if texts else None,
        "tool_calls": calls,
        "error": record.get("error"),
    }


def _cut(message: Message) -> Message:
    parts = tuple(
        replace(p, text=p.text[:MAX_STEP_TEXT] + "\n… (cut: open the exchange for the rest)")
        if len(p.text) > MAX_STEP_TEXT
        else p
        for p in message.parts
    )
    return Message(message.role, parts)


def _text(step: Mapping[str, Any], record: Mapping[str, Any]) -> str:
    pieces: list[str] = []
    for message in step["new_messages"]:
        for part in message["parts"]:
            pieces.extend(x for x in (part["name"], part["text"]) if x)
    pieces.extend(x for x in (step["answer"], record.get("error")) if isinstance(x, str))
    for call in step["tool_calls"]:
        pieces.extend(x for x in (call["name"], call["arguments"]) if x)
    return "\n".join(pieces)


def _title(turns: Iterable[Turn]) -> str:
    """The first words a user sent in a thread, for its row in the list."""
    for turn in turns:
        if turn.role in ("user", "input", "request") and turn.part.kind == "text":
            return " ".join(turn.part.text.split())[:160]
    return ""


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def rows(
    conn: sqlite3.Connection, sql: str, params: Iterable[Any] = ()
) -> Iterator[dict[str, Any]]:
    for row in conn.execute(sql, tuple(params)):
        yield dict(row)
