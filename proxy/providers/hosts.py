"""Which LLM API a request is for: the host map (host → provider) and the path shapes that name
each wire API. Pure; `classify` is memoised per host map and costs a dict lookup when warm.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Final

from llmreel.core.calls import Endpoint

__all__ = [
    "ANTHROPIC_MESSAGES",
    "DEFAULT_HOSTS",
    "GEMINI_EMBED",
    "GEMINI_EMBED_PATH",
    "GEMINI_GENERATE",
    "GEMINI_MODEL_PATH",
    "OPENAI_CHAT",
    "OPENAI_COMPLETIONS",
    "OPENAI_EMBEDDINGS",
    "OPENAI_RESPONSES",
    "HostMap",
    "classify",
    "clean_path",
    "parse_host_mappings",
]

# The wire APIs, as `Endpoint.api` names them (and the exchange log records them).
OPENAI_CHAT: Final = "openai.chat"
OPENAI_RESPONSES: Final = "openai.responses"
OPENAI_EMBEDDINGS: Final = "openai.embeddings"
OPENAI_COMPLETIONS: Final = "openai.completions"
ANTHROPIC_MESSAGES: Final = "anthropic.messages"
GEMINI_GENERATE: Final = "gemini.generate"
GEMINI_EMBED: Final = "gemini.embed"

# The Responses API has no dedicated OTel operation; "chat" is what it is used for.
_OPERATION: Final[Mapping[str, str]] = {
    OPENAI_CHAT: "chat",
    OPENAI_RESPONSES: "chat",
    OPENAI_EMBEDDINGS: "embeddings",
    OPENAI_COMPLETIONS: "text_completion",
    ANTHROPIC_MESSAGES: "chat",
    GEMINI_GENERATE: "generate_content",
    GEMINI_EMBED: "embeddings",
}

# Well-known gen_ai.provider.name values; providers without one use their own id.
_OTEL_PROVIDER: Final[Mapping[str, str]] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "vertex": "gcp.vertex_ai",
    "azure": "azure.ai.openai",
    "groq": "groq",
    "mistral": "mistral_ai",
    "deepseek": "deepseek",
    "xai": "x_ai",
    "perplexity": "perplexity",
    "cohere": "cohere",
}

# For hosts nobody configured, the shape of the path is the only evidence.
_COMPATIBLE_PROVIDER: Final[Mapping[str, str]] = {
    OPENAI_CHAT: "openai-compatible",
    OPENAI_RESPONSES: "openai-compatible",
    OPENAI_EMBEDDINGS: "openai-compatible",
    OPENAI_COMPLETIONS: "openai-compatible",
    ANTHROPIC_MESSAGES: "anthropic-compatible",
    GEMINI_GENERATE: "gemini-compatible",
    GEMINI_EMBED: "gemini-compatible",
}

_DEFAULT_HOST_ENTRIES: Final[Mapping[str, str]] = {
    "api.openai.com": "openai",
    "api.anthropic.com": "anthropic",
    "generativelanguage.googleapis.com": "gemini",
    "aiplatform.googleapis.com": "vertex",
    "*-aiplatform.googleapis.com": "vertex",  # regional: us-central1-aiplatform.googleapis.com
    "*.openai.azure.com": "azure",
    "*.cognitiveservices.azure.com": "azure",  # newer Azure OpenAI resources
    "*.services.ai.azure.com": "azure",  # Azure AI Foundry
    "api.groq.com": "groq",
    "api.together.xyz": "together",
    "api.together.ai": "together",
    "api.mistral.ai": "mistral",
    "api.deepseek.com": "deepseek",
    "openrouter.ai": "openrouter",
    "api.fireworks.ai": "fireworks",
    "api.x.ai": "xai",
    "api.cerebras.ai": "cerebras",
    "api.perplexity.ai": "perplexity",
    "api.cohere.com": "cohere",
    "api.cohere.ai": "cohere",
    "api.moonshot.ai": "moonshotai",
    "localhost:11434": "ollama",
    "127.0.0.1:11434": "ollama",
}

_CLASSIFY_CACHE_MAX: Final = 4096


class HostMap(Mapping[str, str]):
    """An immutable host-pattern -> provider-id mapping with memoised lookups.

    Keys are an exact host ("api.openai.com"), a host with port ("localhost:11434", which
    matches only that port), or a wildcard "*suffix" ("*.openai.azure.com", which matches any
    longer host ending in the suffix; the longest matching suffix wins). Keys are
    case-insensitive. Build one per configuration and pass it to `classify`: it caches its
    answers, so classification costs a dict lookup on the hot path.
    """

    __slots__ = ("_cache", "_entries", "_exact", "_suffixes")

    def __init__(self, entries: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        items = entries.items() if isinstance(entries, Mapping) else entries
        self._entries: dict[str, str] = {}
        for key, provider in items:
            norm = key.strip().lower().rstrip(".")
            if not norm or norm == "*" or not provider:
                raise ValueError(f"invalid host mapping {key!r} -> {provider!r}")
            self._entries[norm] = provider
        self._exact = {k: v for k, v in self._entries.items() if not k.startswith("*")}
        self._suffixes = sorted(
            ((k[1:], v) for k, v in self._entries.items() if k.startswith("*")),
            key=lambda kv: -len(kv[0]),
        )
        self._cache: dict[tuple[str, str], Endpoint | None] = {}

    def __getitem__(self, key: str) -> str:
        return self._entries[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"HostMap({self._entries!r})"

    def merged(self, extra: Mapping[str, str]) -> HostMap:
        """A new map with `extra` layered over this one (user configuration over defaults)."""
        return HostMap({**self._entries, **extra})

    def provider_for(self, host: str) -> str | None:
        """The provider id configured for `host` (which may carry a ":port"), or None."""
        h = host.strip().lower().rstrip(".")
        bare = _strip_port(h)
        found = self._exact.get(h)
        if found is None and bare != h:
            found = self._exact.get(bare)
        if found is not None:
            return found
        for suffix, provider in self._suffixes:
            if len(bare) > len(suffix) and bare.endswith(suffix):
                return provider
        return None

    def classify(self, host: str, path: str) -> Endpoint | None:
        """`classify` for a POST; memoised per (host, path)."""
        key = (host, path)
        try:
            return self._cache[key]
        except KeyError:
            pass
        ep = _classify(self.provider_for(host), clean_path(path))
        if len(self._cache) >= _CLASSIFY_CACHE_MAX:
            self._cache.clear()  # hosts and paths come from the wire: keep memory bounded
        self._cache[key] = ep
        return ep


DEFAULT_HOSTS: Final[HostMap] = HostMap(_DEFAULT_HOST_ENTRIES)


def _strip_port(host: str) -> str:
    if host.startswith("["):  # [::1]:11434
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    if host.count(":") == 1:  # a bare IPv6 address has several colons and no port
        return host.partition(":")[0]
    return host


def clean_path(path: str) -> str:
    """`path` without query, fragment or trailing slash: the part whose shape names the API."""
    # Callers should pass the path without the query, but a stray one must not defeat matching.
    cut = path.find("?")
    if cut != -1:
        path = path[:cut]
    cut = path.find("#")
    if cut != -1:
        path = path[:cut]
    return path.rstrip("/") if len(path) > 1 else path


# Gemini names the model in the path, so `request.request_model` reads it with this too.
GEMINI_MODEL_PATH: Final = re.compile(
    r"/(?:models|tunedModels)/([^/:]+):(generateContent|streamGenerateContent)$"
)
# `models/{model}:embedContent` (one text) and `:batchEmbedContents` (several).
GEMINI_EMBED_PATH: Final = re.compile(
    r"/(?:models|tunedModels)/([^/:]+):(embedContent|batchEmbedContents)$"
)
# On unknown hosts the generic suffixes must follow a version segment ("/v1/responses"), so that
# e.g. a web app's POST /api/messages is not mistaken for Anthropic traffic.
_VERSIONED: Final = re.compile(r"/v\d+[a-z0-9]*/(?:responses|embeddings|completions|messages)$")


def _api_for_path(path: str) -> str | None:
    if path.endswith("/chat/completions"):
        return OPENAI_CHAT
    if path.endswith("/responses"):
        # Only the create call: /responses/{id}, /responses/{id}/cancel and
        # /responses/input_tokens end differently.
        return OPENAI_RESPONSES
    if path.endswith("/embeddings"):
        return OPENAI_EMBEDDINGS
    if path.endswith("/completions"):
        return OPENAI_COMPLETIONS
    if path.endswith("/messages"):
        # Not /messages/count_tokens (free, generates nothing) nor /messages/batches (async
        # jobs, billed at batch rates, results fetched elsewhere): those end differently.
        return ANTHROPIC_MESSAGES
    if path.endswith("Content") and GEMINI_MODEL_PATH.search(path):
        return GEMINI_GENERATE
    if path.endswith(("embedContent", "EmbedContents")) and GEMINI_EMBED_PATH.search(path):
        return GEMINI_EMBED
    return None


def _classify(provider: str | None, path: str) -> Endpoint | None:
    api = _api_for_path(path)
    if api is None:
        return None
    if provider is None:
        strict = (
            api in (OPENAI_CHAT, GEMINI_GENERATE, GEMINI_EMBED)
            or _VERSIONED.search(path) is not None
        )
        if not strict:
            return None
        provider = _COMPATIBLE_PROVIDER[api]
    return Endpoint(provider, api, _OPERATION[api], _OTEL_PROVIDER.get(provider, provider))


def classify(
    method: str,
    host: str,
    path: str,
    hosts: HostMap | Mapping[str, str] = DEFAULT_HOSTS,
) -> Endpoint | None:
    """Classify a request as LLM traffic, or return None.

    Only POST can be an LLM call. The API flavour comes from the shape of `path` (suffix match,
    any prefix, query string excluded): `/chat/completions`, `/responses`, `/embeddings`,
    `/completions`, `/messages`, `/models/{m}:generateContent`, `:streamGenerateContent`,
    `:embedContent` and `:batchEmbedContents`.
    A known host with any other path (`/v1/models`, `/v1/files`, `/v1/messages/count_tokens`)
    is not an LLM call. An unknown host counts only when the shape is unambiguous: any
    `/chat/completions` or Gemini path, or a generic suffix right after a version segment
    (`/v1/messages`), and its provider is then "<shape>-compatible".

    `host` may include ":port". Pass a `HostMap` (DEFAULT_HOSTS is one): a plain Mapping is
    converted on every call, which is correct but slower.
    """
    if method.upper() != "POST":
        return None
    hostmap = hosts if isinstance(hosts, HostMap) else HostMap(hosts)
    return hostmap.classify(host, path)


def parse_host_mappings(items: Iterable[str]) -> dict[str, str]:
    """`HOST=PROVIDER` items (the `llmreel_hosts` option) as a host -> provider dict.

    Surrounding whitespace is dropped and a later item for the same host wins. Layer the result
    over the defaults with `DEFAULT_HOSTS.merged(...)`. Raises ValueError naming the first item
    that is not `HOST=PROVIDER`.
    """
    mappings: dict[str, str] = {}
    for item in items:
        host, sep, provider = item.partition("=")
        if not sep or not host.strip() or not provider.strip():
            raise ValueError(f"{item!r} is not HOST=PROVIDER, e.g. llm.internal=openai")
        mappings[host.strip()] = provider.strip()
    return mappings
