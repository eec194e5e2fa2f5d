"""What an LLM API request is (provider, wire flavour, model, streaming), and what its response says.

Pure functions over strings, bytes and parsed JSON: no I/O. `summarize` never raises on wire data.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final
from urllib.parse import unquote

import orjson
from llmreel.core.jsonish import as_dict as _dict
from llmreel.core.jsonish import as_list as _list
from llmreel.core.jsonish import as_str as _str
from llmreel.providers.sse import SSEEvent, looks_like_sse, parse_sse

__all__ = [
    "DEFAULT_HOSTS",
    "Endpoint",
    "HostMap",
    "ResponseSummary",
    "ToolCall",
    "Usage",
    "classify",
    "request_model",
    "summarize",
    "wants_stream",
]


# --------------------------------------------------------------------------------------------
# Usage


@dataclass(frozen=True, slots=True)
class Usage:
    """Billed tokens, normalised across providers so that totals are comparable.

    `input` counts ALL input tokens, cache reads and cache writes included (Anthropic reports
    uncached input only; we add the cache counts back). `output` counts ALL output tokens,
    reasoning included (Gemini reports thoughts separately; we add them back). `cache_read`,
    `cache_write` and `reasoning` are subsets of those totals, never extra.
    """

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0
    reasoning: int = 0

    @property
    def total(self) -> int:
        return self.input + self.output

    def as_dict(self) -> dict[str, int]:
        return {
            "input": self.input,
            "output": self.output,
            "cache_read": self.cache_read,
            "cache_write": self.cache_write,
            "reasoning": self.reasoning,
        }

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            self.input + other.input,
            self.output + other.output,
            self.cache_read + other.cache_read,
            self.cache_write + other.cache_write,
            self.reasoning + other.reasoning,
        )


# --------------------------------------------------------------------------------------------
# Classification


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An LLM API endpoint, as far as llmreel cares.

    `provider` is llmreel's id (see DEFAULT_HOSTS; an unknown host speaking a known wire shape
    is "openai-compatible", "anthropic-compatible" or "gemini-compatible"). `api` is the wire
    flavour, which decides how bodies are read. `operation` and `otel_provider` are the
    OpenTelemetry GenAI `gen_ai.operation.name` and `gen_ai.provider.name` values.
    """

    provider: str
    api: str
    operation: str
    otel_provider: str


OPENAI_CHAT: Final = "openai.chat"
OPENAI_RESPONSES: Final = "openai.responses"
OPENAI_EMBEDDINGS: Final = "openai.embeddings"
OPENAI_COMPLETIONS: Final = "openai.completions"
ANTHROPIC_MESSAGES: Final = "anthropic.messages"
GEMINI_GENERATE: Final = "gemini.generate"

# The Responses API has no dedicated OTel operation; "chat" is what it is used for.
_OPERATION: Final[Mapping[str, str]] = {
    OPENAI_CHAT: "chat",
    OPENAI_RESPONSES: "chat",
    OPENAI_EMBEDDINGS: "embeddings",
    OPENAI_COMPLETIONS: "text_completion",
    ANTHROPIC_MESSAGES: "chat",
    GEMINI_GENERATE: "generate_content",
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
        ep = _classify(self.provider_for(host), _clean_path(path))
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


def _clean_path(path: str) -> str:
    # Callers should pass the path without the query, but a stray one must not defeat matching.
    cut = path.find("?")
    if cut != -1:
        path = path[:cut]
    cut = path.find("#")
    if cut != -1:
        path = path[:cut]
    return path.rstrip("/") if len(path) > 1 else path


_GEMINI_PATH: Final = re.compile(
    r"/(?:models|tunedModels)/([^/:]+):(generateContent|streamGenerateContent)$"
)
_AZURE_DEPLOYMENT: Final = re.compile(r"/deployments/([^/]+)/")
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
    if path.endswith("Content") and _GEMINI_PATH.search(path):
        return GEMINI_GENERATE
    return None


def _classify(provider: str | None, path: str) -> Endpoint | None:
    api = _api_for_path(path)
    if api is None:
        return None
    if provider is None:
        strict = api in (OPENAI_CHAT, GEMINI_GENERATE) or _VERSIONED.search(path) is not None
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
    `/completions`, `/messages`, `/models/{m}:generateContent` and `:streamGenerateContent`.
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


def request_model(ep: Endpoint, path: str, body: object) -> str | None:
    """The model a request asks for.

    Gemini names it in the path (`models/{model}:generateContent`); everyone else in the JSON
    body's "model". Azure's deployment URLs carry no model in the body, so the deployment name
    (which the user chose, often but not always the model name) stands in.
    """
    clean = _clean_path(path)
    if ep.api == GEMINI_GENERATE:
        m = _GEMINI_PATH.search(clean)
        if m:
            return unquote(m.group(1))
    if isinstance(body, dict):
        model = body.get("model")
        if isinstance(model, str) and model:
            return model
    m = _AZURE_DEPLOYMENT.search(clean)
    if m:
        return unquote(m.group(1))
    return None


def wants_stream(ep: Endpoint, path: str, query: str, body: object) -> bool:
    """Whether the request asks for a streamed response.

    Gemini streams by method name (`:streamGenerateContent`; `alt=sse` in `query` only picks
    SSE framing over a JSON array, both of which are streams). Everyone else sets
    `"stream": true` in the body.
    """
    if ep.api == GEMINI_GENERATE:
        return _clean_path(path).endswith(":streamGenerateContent")
    return isinstance(body, dict) and body.get("stream") is True


# --------------------------------------------------------------------------------------------
# Response summaries


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the model asked the client to make. `arguments` is JSON text."""

    id: str | None
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ResponseSummary:
    """What a response body says, stream or not.

    `usage` is None when the body carries none (a chat stream without `include_usage`, an
    error, a stream cut before its usage event). `complete` means a JSON body parsed, or a
    stream reached its terminator (`[DONE]`; `response.completed|incomplete|failed`;
    `message_stop`; a Gemini chunk with `finishReason`). `error` is an error body's or a
    mid-stream error event's "type: message", or "unparseable body" / "empty body".
    With n > 1 choices, only choice 0 is summarised.
    """

    model: str | None
    usage: Usage | None
    text: str
    tool_calls: tuple[ToolCall, ...]
    finish_reason: str | None
    complete: bool
    error: str | None


def _failed(error: str) -> ResponseSummary:
    return ResponseSummary(None, None, "", (), None, False, error)


UNPARSEABLE: Final = _failed("unparseable body")
EMPTY: Final = _failed("empty body")

_FIRST_BYTE: Final = re.compile(rb"[ \t\r\n]*([^ \t\r\n])")
_ERROR_MAX: Final = 500


def summarize(ep: Endpoint, body: bytes, content_type: str) -> ResponseSummary:
    """Summarise a response `body` (already decoded from any Content-Encoding).

    Handles JSON bodies, SSE streams, and Gemini's JSON-array stream. A body starting with
    `{` or `[` is read as JSON whatever `content_type` says (an error body on a streamed
    request is JSON); otherwise it is SSE if `content_type` says so or the body starts like an
    event stream, and "unparseable body" if not (a gateway's HTML error page). Never raises.
    """
    try:
        return _summarize(ep, body, content_type)
    except Exception:  # noqa: BLE001 - last-resort guard: a parser bug must not break the proxy
        return UNPARSEABLE


def _summarize(ep: Endpoint, body: bytes, content_type: str) -> ResponseSummary:
    m = _FIRST_BYTE.match(body)
    if m is None:
        return EMPTY
    if m.group(1) in b"{[":
        return _summarize_json(ep.api, body)
    if "event-stream" in content_type.lower() or looks_like_sse(body):
        return _summarize_events(ep.api, parse_sse(body))
    return UNPARSEABLE


def _summarize_json(api: str, body: bytes) -> ResponseSummary:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        if api == GEMINI_GENERATE:
            # A Gemini array stream cut short is invalid JSON, but its finished chunks count.
            chunks = _complete_array_items(body)
            if chunks:
                return _gemini_chunks(chunks)
        return UNPARSEABLE
    if isinstance(doc, list):
        return _gemini_chunks(doc) if api == GEMINI_GENERATE else UNPARSEABLE
    if not isinstance(doc, dict):
        return UNPARSEABLE
    if api == GEMINI_GENERATE:
        return replace(_gemini_chunks([doc]), complete=True)  # a whole JSON body is complete
    error = _body_error(doc)
    if api == ANTHROPIC_MESSAGES:
        return _anthropic_message(doc, error)
    if api == OPENAI_RESPONSES:
        return _responses_object(doc, error, complete=True)
    return _chat_like(doc, error, legacy=api == OPENAI_COMPLETIONS)


def _summarize_events(api: str, events: list[SSEEvent]) -> ResponseSummary:
    if api == ANTHROPIC_MESSAGES:
        return _anthropic_stream(events)
    if api == OPENAI_RESPONSES:
        return _responses_stream(events)
    if api == GEMINI_GENERATE:
        return _gemini_chunks(_sse_objects(events))
    return _chat_stream(events, legacy=api == OPENAI_COMPLETIONS)


# --- small, total helpers over untrusted JSON --------------------------------------------------


def _int(value: object) -> int:
    """A token count from the wire; anything that is not a finite, non-negative number is 0."""
    if type(value) is int:
        return max(0, value)
    if type(value) is float and math.isfinite(value) and value > 0:
        return int(value)
    return 0





def _loads(data: str) -> object:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _sse_objects(events: Iterable[SSEEvent]) -> list[dict[str, Any]]:
    return [obj for ev in events if isinstance(obj := _loads(ev.data), dict)]


def _dumps(value: object) -> str:
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        return "null"


def _error_text(obj: Mapping[str, Any]) -> str:
    """ "kind: message" from any provider's error object (nested under "error" or not)."""
    inner = obj.get("error")
    if isinstance(inner, str) and inner:
        return inner[:_ERROR_MAX]  # Ollama and others: {"error": "model not found"}
    err = inner if isinstance(inner, dict) else obj
    kind = next(
        (
            k
            for k in (err.get("code"), err.get("type"), err.get("status"))
            if isinstance(k, str) and k and k != "error"
        ),
        None,
    )
    message = _str(err.get("message"))
    text = ": ".join(p for p in (kind, message) if p) or "error"
    return text[:_ERROR_MAX]


def _body_error(doc: Mapping[str, Any]) -> str | None:
    err = doc.get("error")
    if err is None or err == "" or err == {}:
        return None
    if isinstance(err, (dict, str)):
        return _error_text(doc)
    return None


def _complete_array_items(body: bytes) -> list[dict[str, Any]]:
    """The objects that arrived whole in a JSON array cut short (only used on invalid JSON)."""
    text = body.decode("utf-8", errors="replace")
    decoder = json.JSONDecoder()
    i = _skip_separators(text, 0)
    if text[i : i + 1] != "[":
        return []
    i += 1
    items: list[dict[str, Any]] = []
    while True:
        i = _skip_separators(text, i)
        if i >= len(text) or text[i] == "]":
            return items
        try:
            obj, i = decoder.raw_decode(text, i)
        except (ValueError, RecursionError):
            return items
        if isinstance(obj, dict):
            items.append(obj)


def _skip_separators(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n,":
        i += 1
    return i


# --- usage normalisation ----------------------------------------------------------------------


def _openai_usage(u: Mapping[str, Any]) -> Usage:
    """Chat/completions/embeddings ("prompt_tokens") and Responses ("input_tokens") usage.

    Both report totals that already include cached input and reasoning output.
    """
    if "prompt_tokens" in u or "completion_tokens" in u:
        inp = _int(u.get("prompt_tokens"))
        out = _int(u.get("completion_tokens"))
        in_details = _dict(u.get("prompt_tokens_details"))
        out_details = _dict(u.get("completion_tokens_details"))
    else:
        inp = _int(u.get("input_tokens"))
        out = _int(u.get("output_tokens"))
        in_details = _dict(u.get("input_tokens_details"))
        out_details = _dict(u.get("output_tokens_details"))
    cache_read = _int(in_details.get("cached_tokens"))
    if not cache_read:
        cache_read = _int(u.get("prompt_cache_hit_tokens"))  # DeepSeek's spelling
    return Usage(
        input=inp,
        output=out,
        cache_read=cache_read,
        cache_write=_int(in_details.get("cache_write_tokens")),  # OpenRouter
        reasoning=_int(out_details.get("reasoning_tokens")),
    )


def _anthropic_step(u: Mapping[str, Any]) -> Usage:
    cache_write = u.get("cache_creation_input_tokens")
    if cache_write is None:
        cache_write = sum(_int(v) for v in _dict(u.get("cache_creation")).values())
    cw = _int(cache_write)
    cr = _int(u.get("cache_read_input_tokens"))
    return Usage(
        input=_int(u.get("input_tokens")) + cw + cr,
        output=_int(u.get("output_tokens")),
        cache_read=cr,
        cache_write=cw,
    )


def _anthropic_usage(u: Mapping[str, Any]) -> Usage:
    """Anthropic usage, made inclusive: input = input_tokens + cache writes + cache reads.

    Context compaction runs an extra sampling step inside one request. The response then lists
    every billed step in `usage.iterations`, while its top-level counts describe only the final
    (non-compaction) step: in `anthropic-compaction-cache-stream.sse` the top level says 181 in,
    0 cache read, 8 out, but the compaction step also read 55,096 cached tokens and wrote 83.
    Anthropic's compaction docs say to sum `iterations` for the billed total, so when it is
    present we do exactly that and ignore the top level.
    """
    iterations = [it for it in _list(u.get("iterations")) if isinstance(it, dict)]
    if iterations:
        total = Usage()
        for it in iterations:
            total = total + _anthropic_step(it)
        return total
    return _anthropic_step(u)


def _gemini_usage(u: Mapping[str, Any]) -> Usage:
    """promptTokenCount includes cached content; candidates exclude thoughts, so add them.

    toolUsePromptTokenCount (input the model read from tools such as grounding) is billed as
    input but reported outside promptTokenCount, so it is added too.
    """
    thoughts = _int(u.get("thoughtsTokenCount"))
    return Usage(
        input=_int(u.get("promptTokenCount")) + _int(u.get("toolUsePromptTokenCount")),
        output=_int(u.get("candidatesTokenCount")) + thoughts,
        cache_read=_int(u.get("cachedContentTokenCount")),
        reasoning=thoughts,
    )


# --- OpenAI chat and legacy completions -------------------------------------------------------


class _ToolAcc:
    """A tool call being assembled from fragments."""

    __slots__ = ("id", "name", "parts")

    def __init__(
        self, call_id: str | None = None, name: str = "", parts: list[str] | None = None
    ) -> None:
        self.id = call_id
        self.name = name
        self.parts = parts if parts is not None else []

    def done(self) -> ToolCall:
        return ToolCall(self.id, self.name, "".join(self.parts))


def _first_choice(choices: object) -> dict[str, Any] | None:
    for choice in _list(choices):
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            return choice
    return None


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    # Some compatible servers return content parts instead of a string.
    return "".join(
        t for p in _list(content) if isinstance(p, dict) and isinstance(t := p.get("text"), str)
    )


def _chat_like(doc: Mapping[str, Any], error: str | None, *, legacy: bool) -> ResponseSummary:
    """Non-stream chat completion, legacy completion, or embeddings response."""
    usage_obj = doc.get("usage")
    usage = _openai_usage(usage_obj) if isinstance(usage_obj, dict) else None
    choice = _first_choice(doc.get("choices")) or {}
    calls: list[ToolCall] = []
    if legacy:
        text = _content_text(choice.get("text"))
    else:
        message = _dict(choice.get("message"))
        text = _content_text(message.get("content"))
        for tc in _list(message.get("tool_calls")):
            fn = _dict(_dict(tc).get("function"))
            if fn:
                calls.append(
                    ToolCall(
                        _str(tc.get("id")),
                        _str(fn.get("name")) or "",
                        _args_text(fn.get("arguments")),
                    )
                )
        fc = _dict(message.get("function_call"))  # the pre-tools function-calling API
        if fc:
            calls.append(
                ToolCall(None, _str(fc.get("name")) or "", _args_text(fc.get("arguments")))
            )
    return ResponseSummary(
        model=_str(doc.get("model")),
        usage=usage,
        text=text,
        tool_calls=tuple(calls),
        finish_reason=_str(choice.get("finish_reason")),
        complete=True,
        error=error,
    )


def _args_text(arguments: object) -> str:
    # OpenAI sends JSON text; a few compatible servers send the object itself.
    if isinstance(arguments, str):
        return arguments
    return "" if arguments is None else _dumps(arguments)


def _chat_stream(events: list[SSEEvent], *, legacy: bool) -> ResponseSummary:
    model: str | None = None
    usage: Usage | None = None
    text: list[str] = []
    tools: dict[int, _ToolAcc] = {}
    finish: str | None = None
    complete = False
    error: str | None = None
    for ev in events:
        if ev.data.strip() == "[DONE]":
            complete = True
            continue
        obj = _loads(ev.data)
        if not isinstance(obj, dict):
            continue
        if ev.event == "error" or _body_error(obj):
            error = _error_text(obj)
            continue
        if model is None:
            model = _str(obj.get("model")) or None
        usage_obj = obj.get("usage")
        if isinstance(usage_obj, dict):
            usage = _openai_usage(usage_obj)
        choice = _first_choice(obj.get("choices"))
        if choice is None:
            continue
        finish = _str(choice.get("finish_reason")) or finish
        if legacy:
            if isinstance(piece := choice.get("text"), str):
                text.append(piece)
            continue
        delta = _dict(choice.get("delta"))
        if isinstance(piece := delta.get("content"), str):
            text.append(piece)
        for tc in _list(delta.get("tool_calls")):
            if isinstance(tc, dict):
                _chat_tool_delta(tools, tc)
    return ResponseSummary(
        model=model,
        usage=usage,
        text="".join(text),
        tool_calls=tuple(tools[i].done() for i in sorted(tools)),
        finish_reason=finish,
        complete=complete,
        error=error,
    )


def _chat_tool_delta(tools: dict[int, _ToolAcc], tc: Mapping[str, Any]) -> None:
    index = tc.get("index")
    call_id = _str(tc.get("id"))
    if type(index) is not int:
        # Some compatible servers omit the index: a new id starts a new call.
        known = next((i for i, acc in tools.items() if acc.id == call_id), None)
        if known is not None:
            index = known
        elif call_id or not tools:
            index = max(tools, default=-1) + 1
        else:
            index = max(tools)
    acc = tools.get(index)
    if acc is None:
        acc = tools[index] = _ToolAcc()
    if call_id and not acc.id:
        acc.id = call_id
    fn = _dict(tc.get("function"))
    name = _str(fn.get("name"))
    if name and not acc.name:  # some servers repeat the name on every fragment
        acc.name = name
    args = fn.get("arguments")
    if isinstance(args, str):
        acc.parts.append(args)
    elif args is not None:
        acc.parts.append(_dumps(args))


# --- OpenAI Responses ------------------------------------------------------------------------


def _responses_output(output: object) -> tuple[str, list[ToolCall]]:
    text: list[str] = []
    calls: list[ToolCall] = []
    for item in _list(output):
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "message":
            for part in _list(item.get("content")):
                if isinstance(part, dict) and part.get("type") == "output_text":
                    text.append(_str(part.get("text")) or "")
        elif kind == "function_call":
            calls.append(_responses_call(item).done())
    return "".join(text), calls


def _responses_call(item: Mapping[str, Any]) -> _ToolAcc:
    args = item.get("arguments")
    return _ToolAcc(
        _str(item.get("call_id")) or _str(item.get("id")),
        _str(item.get("name")) or "",
        [args] if isinstance(args, str) and args else [],
    )


def _responses_finish(resp: Mapping[str, Any]) -> str | None:
    # Responses has no finish_reason: an incomplete response says why, otherwise its status.
    reason = _str(_dict(resp.get("incomplete_details")).get("reason"))
    return reason or _str(resp.get("status"))


def _responses_object(
    resp: Mapping[str, Any], error: str | None, *, complete: bool
) -> ResponseSummary:
    usage_obj = resp.get("usage")
    text, calls = _responses_output(resp.get("output"))
    return ResponseSummary(
        model=_str(resp.get("model")),
        usage=_openai_usage(usage_obj) if isinstance(usage_obj, dict) else None,
        text=text,
        tool_calls=tuple(calls),
        finish_reason=_responses_finish(resp),
        complete=complete,
        error=error,
    )


_RESPONSES_TERMINAL: Final = frozenset(
    {"response.completed", "response.incomplete", "response.failed"}
)


def _responses_stream(events: list[SSEEvent]) -> ResponseSummary:
    model: str | None = None
    text: list[str] = []
    calls: dict[int, _ToolAcc] = {}
    final: dict[str, Any] | None = None
    error: str | None = None
    for ev in events:
        obj = _loads(ev.data)
        if not isinstance(obj, dict):
            continue
        kind = _str(obj.get("type")) or ev.event
        if kind == "response.output_text.delta":
            if isinstance(delta := obj.get("delta"), str):
                text.append(delta)
        elif kind == "response.function_call_arguments.delta":
            acc = calls.get(_int(obj.get("output_index")))
            if acc is not None and isinstance(delta := obj.get("delta"), str):
                acc.parts.append(delta)
        elif kind in ("response.output_item.added", "response.output_item.done"):
            # .done carries the finished item, so it replaces whatever the deltas built.
            item = _dict(obj.get("item"))
            if item.get("type") == "function_call":
                calls[_int(obj.get("output_index"))] = _responses_call(item)
        elif kind in ("response.created", "response.in_progress"):
            model = _str(_dict(obj.get("response")).get("model")) or model
        elif kind in _RESPONSES_TERMINAL:
            final = _dict(obj.get("response"))
            if kind == "response.failed":
                err = final.get("error")
                error = _error_text({"error": err}) if isinstance(err, dict) else "response.failed"
        elif kind == "error":
            error = _error_text(obj)
    if final is None:
        return ResponseSummary(
            model,
            None,
            "".join(text),
            tuple(calls[i].done() for i in sorted(calls)),
            None,
            False,
            error,
        )
    summary = _responses_object(final, error, complete=True)
    # The deltas are what the client saw; the final object is the fallback for servers that
    # send no deltas.
    streamed_text = "".join(text)
    streamed_calls = tuple(calls[i].done() for i in sorted(calls))
    return ResponseSummary(
        model=summary.model or model,
        usage=summary.usage,
        text=streamed_text or summary.text,
        tool_calls=streamed_calls or summary.tool_calls,
        finish_reason=summary.finish_reason,
        complete=True,
        error=error,
    )


# --- Anthropic Messages -----------------------------------------------------------------------


def _anthropic_message(doc: Mapping[str, Any], error: str | None) -> ResponseSummary:
    text: list[str] = []
    calls: list[ToolCall] = []
    for block in _list(doc.get("content")):
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            text.append(_str(block.get("text")) or "")
        elif kind == "tool_use":
            calls.append(
                ToolCall(
                    _str(block.get("id")),
                    _str(block.get("name")) or "",
                    _dumps(block.get("input", {})),
                )
            )
    usage_obj = doc.get("usage")
    return ResponseSummary(
        model=_str(doc.get("model")),
        usage=_anthropic_usage(usage_obj) if isinstance(usage_obj, dict) else None,
        text="".join(text),
        tool_calls=tuple(calls),
        finish_reason=_str(doc.get("stop_reason")),
        complete=True,
        error=error,
    )


def _anthropic_stream(events: list[SSEEvent]) -> ResponseSummary:
    model: str | None = None
    raw_usage: dict[str, Any] = {}
    text: list[str] = []
    tools: dict[int, tuple[_ToolAcc, object]] = {}  # block index -> (call, initial input)
    finish: str | None = None
    complete = False
    error: str | None = None
    for ev in events:
        obj = _loads(ev.data)
        if not isinstance(obj, dict):
            continue
        kind = _str(obj.get("type")) or ev.event
        if kind == "content_block_delta":
            delta = _dict(obj.get("delta"))
            dkind = delta.get("type")
            if dkind == "text_delta" and isinstance(piece := delta.get("text"), str):
                text.append(piece)
            elif dkind == "input_json_delta" and isinstance(
                piece := delta.get("partial_json"), str
            ):
                entry = tools.get(_int(obj.get("index")))
                if entry is not None:
                    entry[0].parts.append(piece)
        elif kind == "content_block_start":
            block = _dict(obj.get("content_block"))
            if block.get("type") == "text" and isinstance(piece := block.get("text"), str):
                text.append(piece)
            elif block.get("type") == "tool_use":
                acc = _ToolAcc(_str(block.get("id")), _str(block.get("name")) or "")
                tools[_int(obj.get("index"))] = (acc, block.get("input", {}))
        elif kind == "message_start":
            message = _dict(obj.get("message"))
            model = _str(message.get("model")) or model
            _overwrite(raw_usage, message.get("usage"))
        elif kind == "message_delta":
            finish = _str(_dict(obj.get("delta")).get("stop_reason")) or finish
            # message_delta usage is cumulative: overwrite the fields it carries, never add.
            _overwrite(raw_usage, obj.get("usage"))
        elif kind == "message_stop":
            complete = True
        elif kind == "error":
            error = _error_text(obj)
    calls: list[ToolCall] = []
    for i in sorted(tools):
        acc, initial = tools[i]
        # The arguments arrive as input_json_delta fragments; a tool with no arguments may
        # send none at all (or only ""), in which case the start block's input is the answer.
        call = acc.done()
        calls.append(call if call.arguments else ToolCall(acc.id, acc.name, _dumps(initial)))
    return ResponseSummary(
        model=model,
        usage=_anthropic_usage(raw_usage) if raw_usage else None,
        text="".join(text),
        tool_calls=tuple(calls),
        finish_reason=finish,
        complete=complete,
        error=error,
    )


def _overwrite(target: dict[str, Any], usage: object) -> None:
    if isinstance(usage, dict):
        target.update((k, v) for k, v in usage.items() if v is not None)


# --- Gemini -----------------------------------------------------------------------------------


def _gemini_chunks(chunks: Iterable[object]) -> ResponseSummary:
    """A generateContent response is one chunk; a stream (SSE or JSON array) is many.

    Usage is cumulative per chunk, so the last chunk that has it wins. Parts marked
    `thought: true` are thinking summaries, not answer text.
    """
    model: str | None = None
    usage: Usage | None = None
    text: list[str] = []
    calls: list[ToolCall] = []
    finish: str | None = None
    complete = False
    error: str | None = None
    for chunk in chunks:
        if not isinstance(chunk, dict):
            continue
        if _body_error(chunk):
            error = _error_text(chunk)
            continue
        model = _str(chunk.get("modelVersion")) or model
        usage_obj = chunk.get("usageMetadata")
        if isinstance(usage_obj, dict):
            usage = _gemini_usage(usage_obj)
        blocked = _str(_dict(chunk.get("promptFeedback")).get("blockReason"))
        if blocked:
            finish, complete = blocked, True
        candidate = _first_choice(chunk.get("candidates"))
        if candidate is None:
            continue
        for part in _list(_dict(candidate.get("content")).get("parts")):
            if not isinstance(part, dict):
                continue
            if isinstance(piece := part.get("text"), str) and not part.get("thought"):
                text.append(piece)
            call = part.get("functionCall")
            if isinstance(call, dict):
                calls.append(
                    ToolCall(
                        _str(call.get("id")),
                        _str(call.get("name")) or "",
                        _dumps(call.get("args", {})),
                    )
                )
        reason = _str(candidate.get("finishReason"))
        if reason:
            finish, complete = reason, True
    return ResponseSummary(model, usage, "".join(text), tuple(calls), finish, complete, error)
