"""Finding credentials where none should be: in any text, or the raw bytes of a store.

Recordings never hold credentials by construction (keys drop them, recorded headers leave them
out, logs mask them), but a request body can carry one (a tool that echoes its configuration, a
prompt that pastes a key), and a committed export must not. `find` reports credential-shaped
strings, of the shapes in `credentials.SHAPES`: the very table the log's scrubbing uses.

The audit is stricter than scrubbing (which may over-mask harmlessly): a key must start at a
word boundary (`risk-assessment-...` is no `sk-` key), and generic shapes need both letters and
digits, so that an audit failing CI means something. `Finding.masked` is all that is ever
printed: a fingerprint, never the secret. Walking stores and files is `storage.audit`'s job.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Buffer, Callable, Iterable, Sequence
from dataclasses import dataclass

from llmreel.core.credentials import Hit, hits, hits_in_bytes, is_secret_name
from llmreel.core.redact import fingerprint, mask

__all__ = ["Finding", "find", "find_bytes", "find_in_query", "line_of"]

# A credential starts at a boundary: not inside a longer word, slug or base64 run.
_WORD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-+/")
_WORD_BYTES = frozenset(c.encode()[0] for c in _WORD_CHARS)
# Masks written by llmreel itself, e.g. "Bearer [redacted 1a2b3c4d]", are not findings: the
# bracket is outside every shape's alphabet, so nothing more is needed for them.


@dataclass(frozen=True, slots=True)
class Finding:
    """A credential-shaped string: what it looks like and where, never the value itself."""

    label: str
    masked: str
    """`[redacted <fingerprint>]`: enough to tell two findings apart or allow one."""
    offset: int
    """Position in the scanned text (characters, or bytes for `find_bytes`)."""

    @property
    def fingerprint(self) -> str:
        return self.masked.removeprefix("[redacted ").removesuffix("]")

    def __str__(self) -> str:
        return f"{self.label} {self.masked}"


def _mixed(value: str) -> bool:
    return any(c.isdigit() for c in value) and any(c.isalpha() for c in value)


def find(text: str, allow: frozenset[str] = frozenset()) -> list[Finding]:
    """Credential-shaped strings in `text`, minus those whose fingerprint is in `allow`."""
    return _findings(hits(text), lambda i: i > 0 and text[i - 1] in _WORD_CHARS, allow)


def find_bytes(data: Buffer, allow: frozenset[str] = frozenset()) -> list[Finding]:
    """`find` over raw bytes (a database file): only the ASCII shapes can match, which is all."""
    view = memoryview(data).cast("B")
    return _findings(hits_in_bytes(view), lambda i: i > 0 and view[i - 1] in _WORD_BYTES, allow)


def find_in_query(
    query: Iterable[Sequence[str]], allow: frozenset[str] = frozenset()
) -> list[Finding]:
    """Values of a canonical request's query parameters named like credentials.

    Keys leave such parameters out, but a recording made before a name was known to carry a
    credential (`credentials.is_secret_name`) holds its value, whatever its shape.
    """
    return [
        Finding(f"credential in query parameter {name}", mask(value), 0)
        for name, value in query
        if is_secret_name(name) and value and fingerprint(value) not in allow
    ]


def _findings(
    found: Iterable[Hit], inside_word: Callable[[int], bool], allow: frozenset[str]
) -> list[Finding]:
    findings = []
    for hit in found:
        shape = hit.shape
        if shape.anchored and inside_word(hit.start):
            continue
        if shape.generic and not _mixed(hit.value):
            continue
        if fingerprint(hit.value) in allow:
            continue
        findings.append(Finding(shape.label, mask(hit.value), hit.start))
    return findings


def line_of(text: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of a character offset, for `path:line:col` reports."""
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column
