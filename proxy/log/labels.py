"""Review labels: `good`, `bad` or a word of the reviewer's own, and a note, on an exchange or a
thread. Kept in the store's `labels` database beside the log; a labelled exchange is kept past
the log's retention while its label exists (see `ExchangeLog`).

    labels = Labels(store)
    labels.set(Target.exchange("01J..."), "bad", "answered in French")
    [t.id for t, _ in labels.items() if _.label == "bad"]
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

import orjson

from llmreel.log.record import format_time

__all__ = ["LABELS_DB", "Label", "LabelError", "LabelStore", "Labels", "Target", "labelled_ids"]

LABELS_DB: Final = b"labels"
MAX_NOTE: Final = 10_000
_LABEL: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,39}$")
_KINDS: Final = {"exchange": "x", "thread": "t"}


class LabelStore(Protocol):
    def get_raw(self, db: bytes, key: bytes) -> bytes | None: ...
    def iter_raw(
        self, db: bytes, *, prefix: bytes = b"", start: bytes | None = None, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]: ...
    def write_raw(self, writes: list[tuple[bytes, bytes, bytes | None]]) -> None: ...


class LabelError(ValueError):
    """A label or note that cannot be kept; the message says what is allowed."""


@dataclass(frozen=True, slots=True)
class Target:
    """What a label is on: an exchange (by id) or a thread (by its id, see `proxy.ui.index`)."""

    kind: Literal["exchange", "thread"]
    id: str

    @classmethod
    def exchange(cls, exchange_id: str) -> Target:
        return cls("exchange", exchange_id)

    @classmethod
    def thread(cls, thread_id: str) -> Target:
        return cls("thread", thread_id)

    @property
    def key(self) -> bytes:
        return f"{_KINDS[self.kind]}:{self.id}".encode()

    @classmethod
    def from_key(cls, key: bytes) -> Target:
        prefix, _, ident = key.decode("utf-8", "replace").partition(":")
        return cls("thread" if prefix == "t" else "exchange", ident)


@dataclass(frozen=True, slots=True)
class Label:
    label: str
    note: str
    time: str

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "note": self.note, "time": self.time}


def check(label: str, note: str) -> tuple[str, str]:
    """`label` and `note` as kept, or LabelError."""
    label = label.strip()
    if not _LABEL.match(label):
        raise LabelError(
            f"label {label[:50]!r}: use one word of up to 40 letters, digits, '_', '.', ':' or '-' "
            "(good, bad, needs-review)"
        )
    if len(note) > MAX_NOTE:
        raise LabelError(f"a note has at most {MAX_NOTE} characters")
    return label, note.strip()


class Labels:
    """The labels of one store. Writes are committed before they return (labels are rare)."""

    def __init__(self, store: LabelStore, *, clock: Any = time.time) -> None:
        self.store = store
        self._clock = clock

    def set(self, target: Target, label: str, note: str = "") -> Label:
        label, note = check(label, note)
        value = Label(label, note, format_time(self._clock()))
        self.store.write_raw([(LABELS_DB, target.key, orjson.dumps(value.as_dict()))])
        return value

    def remove(self, target: Target) -> None:
        self.store.write_raw([(LABELS_DB, target.key, None)])

    def get(self, target: Target) -> Label | None:
        raw = self.store.get_raw(LABELS_DB, target.key)
        return _decode(raw) if raw is not None else None

    def items(self) -> Iterator[tuple[Target, Label]]:
        for key, raw in self.store.iter_raw(LABELS_DB):
            label = _decode(raw)
            if label is not None:
                yield Target.from_key(key), label

    def exchanges(self, label: str | None = None) -> dict[str, Label]:
        """Labelled exchanges (with `label` only, when given), by id."""
        return {
            target.id: value
            for target, value in self.items()
            if target.kind == "exchange" and (label is None or value.label == label)
        }


def labelled_ids(store: LabelStore) -> set[bytes]:
    """The log keys of every labelled exchange (what retention keeps)."""
    prefix = b"x:"
    return {key[len(prefix) :] for key, _ in store.iter_raw(LABELS_DB, prefix=prefix)}


def _decode(raw: bytes) -> Label | None:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    return Label(
        str(doc.get("label") or ""), str(doc.get("note") or ""), str(doc.get("time") or "")
    )
