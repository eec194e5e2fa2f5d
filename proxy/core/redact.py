"""Masking of credentials in headers, query strings and free text, before anything is stored or shown.

Pure functions: no I/O. A masked value keeps a short fingerprint (a truncated SHA-256) so a person
can tell two keys apart in a log without the key itself ever being written anywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable

from llmreel.core.credentials import SHAPES, hits, is_secret_header, is_secret_name

#: Substrings every credential shape contains (see `credentials.SHAPES`): text holding none of
#: them holds no key, and needs no scrubbing.
KEY_HINTS = tuple(dict.fromkeys(hint for shape in SHAPES for hint in shape.hints))
_HINT = re.compile("|".join(re.escape(hint) for hint in KEY_HINTS))


def fingerprint(secret: str) -> str:
    """A short, stable, non-reversible tag for a secret: enough to tell keys apart."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def mask(secret: str) -> str:
    """Replace a credential by a marker that carries only its fingerprint."""
    return f"[redacted {fingerprint(secret)}]"


def mask_header_value(name: str, value: str) -> str:
    if not is_secret_header(name):
        return scrub_text(value)
    scheme, sep, rest = value.partition(" ")
    if sep and scheme.lower() in ("bearer", "basic", "token"):
        return f"{scheme} {mask(rest)}"
    return mask(value)


def mask_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers with every credential value masked (names kept, so a reader sees one was sent)."""
    return [(name, mask_header_value(name, value)) for name, value in headers]


def mask_query(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Query parameters with every credential value masked (see `credentials.is_secret_name`)."""
    return [(k, mask(v) if is_secret_name(k) else v) for k, v in pairs]


def scrub_text(text: str) -> str:
    """Mask anything in free text shaped like an API key, a token or a private key."""
    # Most text holds no key. On short strings (header values) one regex pass over every hint
    # says so fastest; on long ones, `hits` tests each shape's hints as substrings first.
    if len(text) < 512 and _HINT.search(text) is None:
        return text
    found = hits(text)
    if not found:
        return text
    parts: list[str] = []
    done = 0
    for hit in found:
        parts += (text[done : hit.start], mask(hit.value))
        done = hit.end
    parts.append(text[done:])
    return "".join(parts)


#: Where clients put the API key, in the order llmreel looks for it.
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key", "x-goog-api-key")


def credential_of(
    headers: Iterable[tuple[str, str]], query: Iterable[tuple[str, str]]
) -> str | None:
    """The API key a request carries (header or query), or None."""
    found = {name.lower(): value for name, value in headers if name.lower() in CREDENTIAL_HEADERS}
    for name in CREDENTIAL_HEADERS:
        if found.get(name):
            return found[name].removeprefix("Bearer ").removeprefix("bearer ").strip()
    for name, value in query:
        if is_secret_name(name) and value:
            return value
    return None


def credential_scope(credential: str, salt: bytes) -> str:
    """A salted, truncated HMAC of a credential: a stable cache scope that reveals nothing."""
    return hmac.new(salt, credential.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()[:16]


class HeaderMasker:
    """`mask_headers` with a memory of the header lines it masked before.

    A proxy sees the same header lines again and again (the same key, content type, SDK
    version), and masking one costs a few regex passes: each line short enough is masked once
    and then looked up. The memory holds at most `cap` lines; past it, it starts over.
    """

    __slots__ = ("_cap", "_memo")

    #: Lines longer than this are masked every time rather than remembered.
    MAX_LINE = 1024

    def __init__(self, cap: int = 4096) -> None:
        self._cap = cap
        self._memo: dict[tuple[str, str], tuple[str, str]] = {}

    def __call__(self, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        memo = self._memo
        out: list[tuple[str, str]] = []
        for name, value in headers:
            line = (name, value)
            masked = memo.get(line)
            if masked is None:
                masked = (name, mask_header_value(name, value))
                if len(name) + len(value) <= self.MAX_LINE:
                    if len(memo) >= self._cap:
                        memo.clear()
                    memo[line] = masked
            out.append(masked)
        return out
