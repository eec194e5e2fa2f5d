"""Finding credentials where none should be: in a store, an export directory, or any text.

Recordings never hold credentials by construction (keys drop them, recorded headers leave them
out, logs mask them), but a request body can carry one (a tool that echoes its configuration, a
prompt that pastes a key), and a committed export must not. `find` reports credential-shaped
strings: provider API keys, cloud and code-hosting tokens, bearer tokens, JWTs, private keys.

The patterns are stricter than `proxy.redact`'s scrubbing (which may over-mask harmlessly): a
key must start at a word boundary (`risk-assessment-...` is no `sk-` key), and generic shapes
need both letters and digits, so that an audit failing CI means something. `Finding.masked`
is all that is ever printed: a fingerprint, never the secret.

Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from llmreel.core.redact import fingerprint, mask

__all__ = ["Finding", "find", "find_bytes", "line_of"]

# (label, pattern), most specific first: the first alternative that matches names the finding.
_PATTERNS: tuple[tuple[str, str], ...] = (
    ("Anthropic API key", r"sk-ant-[a-z]+\d*-[A-Za-z0-9_\-]{20,}"),
    ("OpenAI API key", r"sk-(?:proj|svcacct|admin|None)-[A-Za-z0-9_\-]{20,}"),
    ("OpenAI-style secret key", r"sk-[A-Za-z0-9_\-]{20,}"),
    ("Google API key", r"AIza[0-9A-Za-z_\-]{35}"),
    ("Groq API key", r"gsk_[A-Za-z0-9]{20,}"),
    ("xAI API key", r"xai-[A-Za-z0-9]{20,}"),
    ("Hugging Face token", r"hf_[A-Za-z0-9]{20,}"),
    ("OpenRouter API key", r"sk-or-v1-[a-f0-9]{32,}"),
    ("AWS access key id", r"(?:AKIA|ASIA)[0-9A-Z]{16}"),
    ("GitHub token", r"(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,})"),
    ("Slack token", r"xox[abposr]-[A-Za-z0-9\-]{10,}"),
    ("Stripe key", r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"),
    ("JSON Web Token", r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"),
    ("private key", r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----"),
    ("bearer token", r"(?<=[Bb]earer )[A-Za-z0-9._~+/\-]{16,}=*"),
)
# Labels whose shape alone is too generic: they also need letters and digits mixed.
_NEEDS_MIX = frozenset({"OpenAI-style secret key", "bearer token"})
# A credential starts at a boundary: not inside a longer word, slug or base64 run.
_BOUNDARY = r"(?<![A-Za-z0-9_\-+/])"
_COMBINED = re.compile(
    "|".join(
        f"(?P<p{i}>{'' if label == 'bearer token' else _BOUNDARY}{pattern})"
        for i, (label, pattern) in enumerate(_PATTERNS)
    )
)
_COMBINED_BYTES = re.compile(_COMBINED.pattern.encode())
# Masks written by llmreel itself, e.g. "Bearer [redacted 1a2b3c4d]", are not findings: the
# bracket is outside every pattern's alphabet, so nothing more is needed for them.


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
    return list(_iter(_COMBINED.finditer(text), allow))


def find_bytes(data: bytes, allow: frozenset[str] = frozenset()) -> list[Finding]:
    """`find` over raw bytes (a database file): only the ASCII shapes can match, which is all."""
    findings: list[Finding] = []
    for m in _COMBINED_BYTES.finditer(data):
        label = _PATTERNS[int(str(m.lastgroup)[1:])][0]
        value = m.group(0).decode("ascii", "replace")
        if label in _NEEDS_MIX and not _mixed(value):
            continue
        if fingerprint(value) in allow:
            continue
        findings.append(Finding(label, mask(value), m.start()))
    return findings


def _iter(matches: Iterator[re.Match[str]], allow: frozenset[str]) -> Iterator[Finding]:
    for m in matches:
        label = _PATTERNS[int(str(m.lastgroup)[1:])][0]
        value = m.group(0)
        if label in _NEEDS_MIX and not _mixed(value):
            continue
        if fingerprint(value) in allow:
            continue
        yield Finding(label, mask(value), m.start())


def line_of(text: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of a character offset, for `path:line:col` reports."""
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column
