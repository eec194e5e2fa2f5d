"""What a credential looks like: the one table that masking, keying and the audit all read.

Two kinds of knowledge live here. Names: which header and query parameter names carry a
credential (`is_secret_name`), so keys leave them out and logs mask them. Shapes: what provider
API keys, tokens and private keys look like in free text (`SHAPES`), so bodies can be scrubbed
(`redact.scrub_text`) and stores audited (`audit.find`). A shape added here is masked and audited
at once.

Pure: no I/O.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Buffer
from dataclasses import dataclass, field

__all__ = [
    "API_KEYS",
    "SECRET_HEADERS",
    "SHAPES",
    "Hit",
    "KeySource",
    "Shape",
    "hits",
    "hits_in_bytes",
    "is_secret_header",
    "is_secret_name",
    "key_source",
]


# --------------------------------------------------------------------------------------------
# Names

#: Headers whose value is a credential though their name does not say so.
SECRET_HEADERS = frozenset({"cookie", "set-cookie"})

# A name is secret when one of its words ends like this: `api_key`, `subscription-key`,
# `X-Amz-Security-Token`, `clientSecret`, `oauth`, `sig`. Whole words, not substrings: a name
# wrongly taken for a credential drops out of the cache key, and requests differing only in
# `max_tokens`, `author` or `design` would then replay each other's answers.
_SECRET_ENDINGS = (
    "key", "token", "secret", "password", "passwd", "auth", "authorization", "sig", "signature",
    "credential", "credentials",
)  # fmt: skip
# Pagination cursors end in "token" but are no credential, and are what tells pages apart.
_CURSORS = frozenset(
    {
        "pagetoken", "nextpagetoken", "prevpagetoken", "previouspagetoken", "nexttoken",
        "continuationtoken", "synctoken", "resumetoken",
    }
)  # fmt: skip
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


@functools.lru_cache(maxsize=2048)
def is_secret_name(name: str) -> bool:
    """Whether a header or query parameter named `name` carries a credential.

    Words are split at `-`, `_`, `.` and camelCase, and compared without case.
    """
    words = [w.lower() for w in _WORD.findall(name)]
    if "".join(words) in _CURSORS:
        return False
    return any(word.endswith(_SECRET_ENDINGS) for word in words)


def is_secret_header(name: str) -> bool:
    return name.lower() in SECRET_HEADERS or is_secret_name(name)


# --------------------------------------------------------------------------------------------
# Where a provider's key comes from


@dataclass(frozen=True, slots=True)
class KeySource:
    """Where an API family's key is found (environment variables, first set wins) and how a
    request carries it (`header`, with `template` formatted with the key)."""

    env: tuple[str, ...]
    header: str
    template: str = "{}"

    def value(self, key: str) -> str:
        return self.template.format(key)


#: The key of each API family (`Endpoint.api` up to its first dot; `azure` by provider), for the
#: commands that send requests themselves: `verify --live`, the playground, `probe`.
API_KEYS: dict[str, KeySource] = {
    "openai": KeySource(("OPENAI_API_KEY",), "authorization", "Bearer {}"),
    "anthropic": KeySource(("ANTHROPIC_API_KEY",), "x-api-key"),
    "gemini": KeySource(("GEMINI_API_KEY", "GOOGLE_API_KEY"), "x-goog-api-key"),
    "azure": KeySource(("AZURE_OPENAI_API_KEY",), "api-key"),
}


#: Providers that run on the user's machine and take no key.
KEYLESS = frozenset({"ollama"})


def key_source(provider: str, api: str) -> KeySource | None:
    """The key an endpoint needs (`provider`, `api` as in `Endpoint`), or None (a local model)."""
    if provider in KEYLESS:
        return None
    if provider == "azure":
        return API_KEYS["azure"]
    return API_KEYS.get(api.split(".", 1)[0])


# --------------------------------------------------------------------------------------------
# Shapes


@dataclass(frozen=True, slots=True)
class Shape:
    """One kind of credential, as it appears in text."""

    label: str
    pattern: str
    """Matches the credential; if it has a group named `value`, only that part is the secret."""
    hints: tuple[str, ...]
    """Substrings every match contains: a cheap test that rules most text out.

    Each costs a pass over the text, as a regex with a literal prefix does: shapes share hints
    (`sk-`), and a short common one (`gh`) beats several rare ones (`ghp_`, `gho_`, ...)."""
    generic: bool = False
    """The shape alone is common in prose: the audit also wants letters and digits mixed."""
    anchored: bool = True
    """The audit wants it to start at a word boundary, not inside a longer word or base64 run."""
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)
    regex_bytes: re.Pattern[bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", re.compile(self.pattern))
        object.__setattr__(self, "regex_bytes", re.compile(self.pattern.encode()))


_PEM = r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"

#: Most specific first: where two shapes match at one place, the earlier one names it.
SHAPES: tuple[Shape, ...] = (
    Shape("Anthropic API key", r"sk-ant-[a-z]+\d*-[A-Za-z0-9_\-]{20,}", ("sk-",)),
    Shape("OpenRouter API key", r"sk-or-v1-[a-f0-9]{32,}", ("sk-",)),
    Shape("OpenAI API key", r"sk-(?:proj|svcacct|admin|None)-[A-Za-z0-9_\-]{20,}", ("sk-",)),
    # 16, not 20: error messages echo a key's first characters (`sk-proj-Zq8xT3vB7nM2****`).
    Shape("OpenAI-style secret key", r"sk-[A-Za-z0-9_\-]{16,}", ("sk-",), generic=True),
    Shape("Google API key", r"AIza[0-9A-Za-z_\-]{30,}", ("AIza",)),
    Shape("Groq API key", r"gsk_[A-Za-z0-9]{20,}", ("gsk_",)),
    Shape("xAI API key", r"xai-[A-Za-z0-9]{20,}", ("xai-",)),
    Shape("Hugging Face token", r"hf_[A-Za-z0-9]{20,}", ("hf_",)),
    Shape("AWS access key id", r"(?:AKIA|ASIA)[0-9A-Z]{16}", ("AKIA", "ASIA")),
    Shape(
        "GitHub token",
        r"gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,}",
        ("gh", "github_pat_"),
    ),
    Shape(
        "Slack token",
        r"xox[abeoprs]-[A-Za-z0-9\-]{10,}|xapp-\d-[A-Za-z0-9\-]{20,}",
        ("xox", "xapp-"),
    ),
    Shape("Stripe key", r"[sr]k_(?:live|test)_[A-Za-z0-9]{16,}", ("_live_", "_test_")),
    Shape(
        "JSON Web Token",
        r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
        ("eyJ",),
    ),
    # The whole block, up to its END line; a block cut short (a truncated body) up to where its
    # base64 ends. `\\` and `n` are in the alphabet for blocks inside JSON strings.
    Shape(
        "private key",
        rf"{_PEM}(?:[A-Za-z0-9+/=\s\\:,\-]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----"
        r"|[A-Za-z0-9+/=\s\\]*)",
        ("PRIVATE KEY",),
        anchored=False,  # often right after a JSON "\n"
    ),
    Shape(
        "bearer token",
        r"[Bb]earer (?P<value>[A-Za-z0-9._~+/\-]{16,}=*)",
        ("earer ",),
        generic=True,
        anchored=False,
    ),
)


@dataclass(frozen=True, slots=True)
class Hit:
    """Where a credential-shaped string is in a text, and which shape it has."""

    shape: Shape
    start: int
    end: int
    value: str


def hits(text: str) -> list[Hit]:
    """Credential-shaped strings in `text`, in order, never overlapping.

    Where matches overlap, the one starting first wins, then the one earlier in `SHAPES`.
    """
    found: list[tuple[int, Hit]] = []
    present: dict[str, bool] = {}  # each hint is looked for once, whichever shapes share it
    for index, shape in enumerate(SHAPES):
        for hint in shape.hints:
            if present.setdefault(hint, hint in text):
                found.extend((index, _hit(shape, m)) for m in shape.regex.finditer(text))
                break
    return _disjoint(found)


def hits_in_bytes(data: Buffer) -> list[Hit]:
    """`hits` in raw bytes (a database file): the shapes are ASCII, so any encoding will do."""
    found: list[tuple[int, Hit]] = []
    for index, shape in enumerate(SHAPES):
        found.extend((index, _hit(shape, m)) for m in shape.regex_bytes.finditer(data))
    return _disjoint(found)


def _hit(shape: Shape, m: re.Match[str] | re.Match[bytes]) -> Hit:
    group = "value" if m.re.groupindex else 0
    value = m.group(group)
    text = value if isinstance(value, str) else value.decode("ascii", "replace")
    return Hit(shape, m.start(group), m.end(group), text)


def _disjoint(found: list[tuple[int, Hit]]) -> list[Hit]:
    kept: list[Hit] = []
    for _, hit in sorted(found, key=lambda f: (f[1].start, f[0])):
        if not kept or hit.start >= kept[-1].end:
            kept.append(hit)
    return kept
