"""Masking of credentials in headers, query strings and free text, before anything is stored or shown.

Pure functions: no I/O. A masked value keeps a short fingerprint (a truncated SHA-256) so a person
can tell two keys apart in a log without the key itself ever being written anywhere.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Iterable

#: Headers whose value is a credential, whatever the provider.
SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
        "cookie",
        "set-cookie",
        "x-amz-security-token",
        "ocp-apim-subscription-key",
        "x-auth-token",
        "x-portkey-api-key",
        "helicone-auth",
    }
)
_SECRET_HEADER_HINTS = ("api-key", "apikey", "token", "secret", "password", "auth")

#: Query parameters that carry credentials (Gemini's `key`, Azure SAS `sig`, ...).
SECRET_QUERY_PARAMS = frozenset(
    {"key", "api_key", "api-key", "apikey", "access_token", "token", "sig", "signature", "auth"}
)

# Shapes of provider API keys and bearer tokens, for scrubbing free text (bodies, error messages).
_KEY_PATTERN = re.compile(
    r"""
    (?:sk-(?:ant-|proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{16,})   # OpenAI, Anthropic
    |(?:AIza[0-9A-Za-z_\-]{30,})                               # Google
    |(?:gsk_[A-Za-z0-9]{20,})                                  # Groq
    |(?:xai-[A-Za-z0-9]{20,})                                  # xAI
    |(?:hf_[A-Za-z0-9]{20,})                                   # Hugging Face
    |(?:(?:AKIA|ASIA)[0-9A-Z]{16})                             # AWS access key id
    |(?:ghp_[A-Za-z0-9]{30,})                                  # GitHub
    |(?<=[Bb]earer\ )[A-Za-z0-9._~+/\-]{16,}=*                 # any bearer token
    """,
    re.VERBOSE,
)


def fingerprint(secret: str) -> str:
    """A short, stable, non-reversible tag for a secret: enough to tell keys apart."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def mask(secret: str) -> str:
    """Replace a credential by a marker that carries only its fingerprint."""
    return f"[redacted {fingerprint(secret)}]"


@functools.lru_cache(maxsize=1024)
def is_secret_header(name: str) -> bool:
    lowered = name.lower()
    if lowered in SECRET_HEADERS:
        return True
    return any(hint in lowered for hint in _SECRET_HEADER_HINTS)


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


def is_secret_query_param(name: str) -> bool:
    return name.lower() in SECRET_QUERY_PARAMS


def mask_query(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, mask(v) if is_secret_query_param(k) else v) for k, v in pairs]


# Every shape in _KEY_PATTERN contains one of these: a substring test per hint is far cheaper
# than the regex over large bodies, which rarely hold a key.
KEY_HINTS = ("sk-", "AIza", "gsk_", "xai-", "hf_", "AKIA", "ASIA", "ghp_", "earer ")


_HINT = re.compile("|".join(re.escape(hint) for hint in KEY_HINTS))


def scrub_text(text: str) -> str:
    """Mask anything in free text that is shaped like an API key or a bearer token."""
    # One regex pass is cheapest on short strings (header values), substring tests on long ones.
    if len(text) < 512:
        if _HINT.search(text) is None:
            return text
    elif not any(hint in text for hint in KEY_HINTS):
        return text
    return _KEY_PATTERN.sub(lambda m: mask(m.group(0)), text)


def find_secrets(text: str) -> list[str]:
    """Credential-shaped strings in `text` (used by audits)."""
    return [m.group(0) for m in _KEY_PATTERN.finditer(text)]


#: Where clients put the API key, in the order llmreel looks for it.
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key", "x-goog-api-key")


def credential_of(headers: Iterable[tuple[str, str]], query: Iterable[tuple[str, str]]) -> str | None:
    """The API key a request carries (header or query), or None."""
    found = {name.lower(): value for name, value in headers if name.lower() in CREDENTIAL_HEADERS}
    for name in CREDENTIAL_HEADERS:
        if found.get(name):
            return found[name].removeprefix("Bearer ").removeprefix("bearer ").strip()
    for name, value in query:
        if is_secret_query_param(name) and value:
            return value
    return None


def credential_scope(credential: str, salt: bytes) -> str:
    """A salted, truncated HMAC of a credential: a stable cache scope that reveals nothing."""
    return hmac.new(salt, credential.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()[:16]
