"""A fake upstream LLM server that speaks the real OpenAI, Anthropic and Gemini wire formats.

The llmreel tests put the proxy between the official SDKs and this server, so the bytes it sends
are modelled on real recordings (see ``tests/fixtures/README.md``): OpenAI's pretty JSON and
``data: [DONE]``, Anthropic's padded SSE payloads and ``ping`` events, Gemini's CRLF SSE and
streamed JSON arrays, the providers' error shapes, content types and cookies.

Behaviour is deterministic where tests compare values and random where reality is random:

* The assistant text depends only on the request (``Echo: <last user words> [<hash>]``), so
  different prompts give different answers and a replay can be compared with a fresh call.
* Ids, ``created`` timestamps and OpenAI ``obfuscation`` strings are random per call, so a test
  can tell whether a response was replayed from a recording or produced by this server.
* Usage is derived from the request: the uncached input is the number of whitespace-separated
  words in all prompt text plus 7; the visible output is the number of words in the reply.
  ``billed`` records what the server reported, normalised, one entry per successful response.

Per-request behaviour is controlled by ``x-fake-*`` request headers; see :class:`Knobs`.

Usage::

    with FakeUpstream(tls=True) as up:
        client = openai.OpenAI(base_url=up.url + "/v1", api_key="sk-test", max_retries=0,
                               http_client=httpx2.Client(verify=up.ssl_context()))

The openai 3.x and anthropic 2.x SDKs run on ``httpx2``; anthropic rejects a legacy
``httpx.Client``. ``up.ssl_context()`` is ``ssl.create_default_context(cafile=up.cert_path)``.

Or from a shell: ``python tests/fakeupstream.py --port 8443 [--plain]``.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import functools
import gzip
import hashlib
import ipaddress
import json
import math
import random
import re
import shutil
import socket
import ssl
import string
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import TCPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

HOST = "127.0.0.1"
Json = dict[str, Any]

# ---------------------------------------------------------------------------------------------
# Recorded data
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it (body already transfer- and content-decoded)."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    json: Any | None

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)


@dataclass(frozen=True)
class Knobs:
    """Test controls read from ``x-fake-*`` request headers."""

    delay_s: float = 0.0  # x-fake-delay-ms: pause between streamed events (once, for JSON)
    status: int | None = None  # x-fake-status: reply with this error status
    cut_after: int | None = None  # x-fake-cut-after: send N stream events, then drop the socket
    cached: int = 0  # x-fake-cached-tokens: cache-read input tokens to report
    cache_write: int = 0  # x-fake-cache-write-tokens: Anthropic cache-creation tokens
    stream_error: bool = False  # x-fake-stream-error: Anthropic mid-stream `event: error`
    gzip: bool = True  # x-fake-gzip: 0 disables gzip of JSON bodies
    body_bytes: int = 0  # x-fake-body-bytes: pad non-streamed reply text to >= N bytes
    reasoning: int | None = None  # x-fake-reasoning-tokens: override reasoning token count
    vary: int | None = None  # x-fake-vary: say it another way (variant N); FakeUpstream.vary counts

    @classmethod
    def from_headers(cls, get: Callable[[str], str | None]) -> Knobs:
        def number(name: str) -> int | None:
            value = get(name)
            try:
                return int(value) if value is not None else None
            except ValueError:
                return None

        status = number("x-fake-status")
        return cls(
            delay_s=max(0, number("x-fake-delay-ms") or 0) / 1000.0,
            status=status if status is not None and status >= 400 else None,
            cut_after=number("x-fake-cut-after"),
            cached=max(0, number("x-fake-cached-tokens") or 0),
            cache_write=max(0, number("x-fake-cache-write-tokens") or 0),
            stream_error=(get("x-fake-stream-error") or "0").strip() not in ("", "0", "false"),
            gzip=(get("x-fake-gzip") or "1").strip() not in ("0", "false"),
            body_bytes=max(0, number("x-fake-body-bytes") or 0),
            reasoning=number("x-fake-reasoning-tokens"),
            vary=number("x-fake-vary"),
        )


@dataclass(frozen=True)
class Usage:
    """Token counts of one reply, split the way llmreel normalises them."""

    prompt: int  # input tokens that were neither read from nor written to the cache
    cache_read: int
    cache_write: int
    output: int  # visible output tokens, excluding reasoning
    reasoning: int

    @property
    def input_total(self) -> int:
        return self.prompt + self.cache_read + self.cache_write

    @property
    def output_total(self) -> int:
        return self.output + self.reasoning

    def billed(self, provider: str, model: str) -> Json:
        return {
            "provider": provider,
            "model": model,
            "input": self.input_total,
            "output": self.output_total,
            "cache_read": self.cache_read,
            "cache_write": self.cache_write,
            "reasoning": self.reasoning,
        }


@dataclass
class Reply:
    """A response ready to be written: either a whole body or a list of stream pieces."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    events: list[bytes] | None = None  # set for streams; each piece is written and flushed
    billed: Json | None = None
    delay_s: float = 0.0
    cut_after: int | None = None
    close_after: bool = False  # close the connection once the reply is complete


@dataclass(frozen=True)
class Call:
    """What an endpoint builder needs to know about a request."""

    path: str
    query: dict[str, list[str]]
    body: Json
    knobs: Knobs
    accept_gzip: bool
    path_params: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Small helpers: randomness, JSON flavours, text
# ---------------------------------------------------------------------------------------------

_ALNUM = string.ascii_letters + string.digits
_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_URLSAFE = _ALNUM + "-_"


def _rand(n: int, alphabet: str = _ALNUM) -> str:
    return "".join(random.choices(alphabet, k=n))


def _hex(n: int) -> str:
    return f"{random.getrandbits(4 * n):0{n}x}"


def _obfuscation() -> str:
    # OpenAI pads chunks with a random-length string so sizes don't leak token lengths.
    return _rand(random.randint(1, 16))


try:  # orjson (an llmreel dependency) is ~10x faster, and byte-identical for these two forms
    import orjson

    def _compact(obj: Any) -> str:
        return orjson.dumps(obj).decode()

    def _pretty(obj: Any) -> str:
        return orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode()

except ImportError:  # pragma: no cover - keeps the CLI usable in a bare interpreter

    def _compact(obj: Any) -> str:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)

    def _pretty(obj: Any) -> str:
        return json.dumps(obj, indent=2, ensure_ascii=False)


def _words(text: str) -> int:
    return len(text.split())


def _texts(value: Any) -> list[str]:
    """All prompt strings inside a message, content list, part or block, in order."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [t for item in value for t in _texts(item)]
    if isinstance(value, dict):
        for key in ("text", "content", "parts", "output"):
            if key in value:
                return _texts(value[key])
    return []


def _split_pieces(text: str, minimum: int = 4) -> list[str]:
    """Split text into word-sized stream deltas, at least ``minimum`` of them if possible."""
    pieces = re.findall(r"\s*\S+", text) or [text]
    while len(pieces) < minimum:
        longest = max(range(len(pieces)), key=lambda i: len(pieces[i]))
        piece = pieces[longest]
        if len(piece) < 2:
            break
        half = len(piece) // 2
        pieces[longest : longest + 1] = [piece[:half], piece[half:]]
    return pieces


def _split_fixed(text: str, parts: int = 5) -> list[str]:
    size = max(1, math.ceil(len(text) / parts))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _padding_words(nbytes: int, seed: str) -> str:
    """Deterministic, poorly compressible filler of about ``nbytes`` bytes (hex 'words')."""
    hexes = hashlib.shake_256(seed.encode()).hexdigest(max(1, nbytes // 2))
    return " ".join(hexes[i : i + 8] for i in range(0, len(hexes), 8))


# ---------------------------------------------------------------------------------------------
# The "model": deterministic answers and usage
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolSpec:
    name: str
    parameters: Json


@dataclass(frozen=True)
class Answer:
    text: str  # empty when the answer is a tool call
    tool_name: str | None
    tool_args: Json | None
    usage: Usage

    @property
    def is_tool(self) -> bool:
        return self.tool_name is not None


_OPENINGS = (
    "Sure.",
    "Let me think about that for a moment before answering.",
    "Good question! Here is what I would say, in a few words:",
    "I am not entirely certain, but my best answer is this one:",
    "Answer:",
)


def _reply_text(model: str, prompt_texts: list[str], last_user: str) -> str:
    words = last_user.split()
    snippet = " ".join(words[:24]) + (" ..." if len(words) > 24 else "")
    digest = hashlib.sha256(_compact([model, prompt_texts]).encode()).hexdigest()[:8]
    return f"Echo: {snippet or '(empty)'} [{digest}]"


def _sample_value(schema: Any, last_user: str) -> Any:
    if not isinstance(schema, dict):
        return last_user or "example"
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type", "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    kind = str(kind).lower()
    if kind in ("integer", "number"):
        return max(1, _words(last_user))
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        return {}
    return " ".join(last_user.split()[:3]) or "example"


def _tool_args(tool: ToolSpec, last_user: str) -> Json:
    props = tool.parameters.get("properties") or {}
    names = tool.parameters.get("required") or list(props)
    return {name: _sample_value(props.get(name), last_user) for name in list(names)[:4]}


def _reasoning_default(provider: str, model: str) -> int:
    name = model.lower().split("/")[-1]
    if provider == "openai" and (re.match(r"o\d", name) or name.startswith("gpt-5")):
        return 64
    if provider == "gemini" and name.startswith(("gemini-2.5", "gemini-3")):
        return 64
    return 0


def _answer(
    provider: str,
    model: str,
    prompt_texts: list[str],
    last_user: str,
    tool: ToolSpec | None,
    knobs: Knobs,
    *,
    pad: bool = False,
    cache_read: bool = True,
    cache_write: bool = False,
    reasoning: bool = True,
) -> Answer:
    """Decide what the fake model says and how many tokens that costs."""
    prompt = sum(_words(t) for t in prompt_texts) + 7
    reasoning_tokens = 0
    if reasoning:
        default = _reasoning_default(provider, model)
        reasoning_tokens = knobs.reasoning if knobs.reasoning is not None else default
    if tool is not None:
        args = _tool_args(tool, last_user)
        # Roughly one token per JSON token of the call.
        output = len(re.findall(r"\w+|[^\w\s]", tool.name + _compact(args)))
        text = ""
    else:
        args = None
        text = _reply_text(model, prompt_texts, last_user)
        if knobs.vary is not None:
            # A model that is not deterministic: the same question answered in other words.
            text = f"{_OPENINGS[knobs.vary % len(_OPENINGS)]} {text}"
        if pad and knobs.body_bytes > len(text):
            text += " " + _padding_words(knobs.body_bytes - len(text), text)
        output = _words(text)
    usage = Usage(
        prompt=prompt,
        cache_read=knobs.cached if cache_read else 0,
        cache_write=knobs.cache_write if cache_write else 0,
        output=output,
        reasoning=max(0, reasoning_tokens),
    )
    return Answer(text, tool.name if tool else None, args, usage)


# ---------------------------------------------------------------------------------------------
# Response headers and bodies shared by every provider
# ---------------------------------------------------------------------------------------------


def _cookie() -> str:
    # Cloudflare-fronted providers set a bot-management cookie; llmreel must never persist it.
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=30)
    return (
        f"__cf_bm=SECRETCOOKIE{_rand(40)}; path=/; "
        f"expires={expires.strftime('%a, %d-%b-%y %H:%M:%S GMT')}; HttpOnly"
    )


def _headers(provider: str, content_type: str, *, sse: bool = False) -> list[tuple[str, str]]:
    headers = [("content-type", content_type)]
    if provider == "openai":
        headers += [
            ("x-request-id", "req_" + _hex(32)),
            ("openai-processing-ms", str(random.randint(80, 900))),
            ("openai-version", "2020-10-01"),
            ("cf-ray", _hex(16) + "-SJC"),
        ]
    elif provider == "anthropic":
        reset = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        headers += [
            ("request-id", "req_011C" + _rand(20, _BASE58)),
            ("anthropic-ratelimit-requests-limit", "4000"),
            ("anthropic-ratelimit-requests-remaining", "3999"),
            ("anthropic-ratelimit-requests-reset", reset.isoformat().replace("+00:00", "Z")),
            ("cf-ray", _hex(16) + "-SJC"),
        ]
        if sse:
            headers.append(("cache-control", "no-cache"))
    else:
        headers.append(("vary", "Origin, X-Origin, Referer"))
        if sse:
            headers.append(("content-disposition", "attachment"))
    headers.append(("set-cookie", _cookie()))
    return headers


def _json_reply(
    provider: str,
    call: Call,
    text: str,
    content_type: str,
    status: int = 200,
    billed: Json | None = None,
) -> Reply:
    """A whole-body reply, gzip'd like the real APIs when the client accepts it."""
    body = text.encode()
    headers = _headers(provider, content_type)
    if call.knobs.gzip and call.accept_gzip:
        body = gzip.compress(body, compresslevel=5, mtime=0)
        headers.append(("content-encoding", "gzip"))
    return Reply(status, headers, body, billed=billed, delay_s=call.knobs.delay_s)


def _stream_reply(
    provider: str,
    call: Call,
    events: list[bytes],
    content_type: str,
    billed: Json | None,
    *,
    sse: bool = True,
    close_after: bool = False,
) -> Reply:
    return Reply(
        200,
        _headers(provider, content_type, sse=sse),
        events=events,
        billed=billed,
        delay_s=call.knobs.delay_s,
        cut_after=call.knobs.cut_after,
        close_after=close_after,
    )


# ---------------------------------------------------------------------------------------------
# Errors, in each provider's real shape
# ---------------------------------------------------------------------------------------------

_OPENAI_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request (fake upstream).", "invalid_request_error", None),
    401: (
        (
            "Incorrect API key provided: sk-test. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
        ),
        "invalid_request_error",
        "invalid_api_key",
    ),
    403: ("You are not allowed to access this resource.", "invalid_request_error", None),
    404: ("The requested resource does not exist.", "invalid_request_error", "not_found"),
    429: (
        "Rate limit reached for requests. Please try again in 1ms.",
        "requests",
        "rate_limit_exceeded",
    ),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}

_ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request (fake upstream)."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your rate limit."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}

_GEMINI_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error_reply(
    provider: str, status: int, call: Call | None = None, message: str | None = None
) -> Reply:
    """An HTTP error with the provider's body shape and headers."""
    if provider == "anthropic":
        kind, default = _ANTHROPIC_ERRORS.get(
            status, ("api_error" if status >= 500 else "invalid_request_error", "Error")
        )
        body = {
            "type": "error",
            "error": {"type": kind, "message": message or default},
            "request_id": "req_011C" + _rand(20, _BASE58),
        }
        text, content_type = _compact(body), "application/json"
    elif provider == "gemini":
        body = {
            "error": {
                "code": status,
                "message": message or f"Fake upstream error {status}.",
                "status": _GEMINI_STATUS.get(status, "INTERNAL" if status >= 500 else "UNKNOWN"),
            }
        }
        text, content_type = _pretty(body) + "\n", "application/json; charset=UTF-8"
    else:
        default_msg, kind, code = _OPENAI_ERRORS.get(
            status,
            (
                "Fake upstream error.",
                "server_error" if status >= 500 else "invalid_request_error",
                None,
            ),
        )
        body = {
            "error": {"message": message or default_msg, "type": kind, "param": None, "code": code}
        }
        text, content_type = _pretty(body), "application/json; charset=utf-8"
    fallback = Call("", {}, {}, Knobs(gzip=False), accept_gzip=False)
    reply = _json_reply(provider, call or fallback, text, content_type, status)
    if status == 429 or status >= 500:
        reply.headers.append(("retry-after", "0"))
    return reply


# ---------------------------------------------------------------------------------------------
# OpenAI
# ---------------------------------------------------------------------------------------------

_OPENAI_JSON = "application/json"
_SSE_UTF8 = "text/event-stream; charset=utf-8"


def _openai_sse(obj: Any) -> bytes:
    return b"data: " + _compact(obj).encode() + b"\n\n"


def _openai_tool(tools: Any) -> ToolSpec | None:
    """The first function tool, in Chat (`{"function": {...}}`) or Responses (flat) shape."""
    for tool in tools or []:
        if not isinstance(tool, dict):
            continue
        spec: Json = tool["function"] if isinstance(tool.get("function"), dict) else tool
        if tool.get("type", "function") == "function" and spec.get("name"):
            return ToolSpec(str(spec["name"]), spec.get("parameters") or {})
    return None


def _chat_usage(u: Usage) -> Json:
    return {
        "prompt_tokens": u.input_total,
        "completion_tokens": u.output_total,
        "total_tokens": u.input_total + u.output_total,
        "prompt_tokens_details": {"cached_tokens": u.cache_read, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": u.reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def openai_chat(call: Call) -> Reply:
    body = call.body
    model = str(body.get("model") or "gpt-4o-mini")
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    texts = [t for m in messages for t in _texts(m.get("content"))]
    users = [m for m in messages if m.get("role") == "user"]
    last_user = " ".join(_texts(users[-1].get("content"))) if users else ""
    tool = _openai_tool(body.get("tools"))
    # A real model answers in text once it has the tool result, so agent loops terminate.
    if body.get("tool_choice") == "none" or (messages and messages[-1].get("role") == "tool"):
        tool = None
    stream = bool(body.get("stream"))
    answer = _answer("openai", model, texts, last_user, tool, call.knobs, pad=not stream)
    billed = answer.usage.billed("openai", model)
    reasoning_model = _reasoning_default("openai", model) > 0
    cid, created = "chatcmpl-" + _rand(29), int(time.time())
    fingerprint = None if reasoning_model else "fp_" + _hex(10)
    call_id = "call_" + _rand(24)
    finish = "tool_calls" if answer.is_tool else "stop"
    args_text = _compact(answer.tool_args) if answer.tool_args is not None else ""

    if not stream:
        message: Json = {"role": "assistant", "content": None if answer.is_tool else answer.text}
        if answer.is_tool:
            message["tool_calls"] = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": answer.tool_name, "arguments": args_text},
                }
            ]
        message |= {"refusal": None, "annotations": []}
        choice: Json = {"index": 0, "message": message}
        if not reasoning_model:  # gpt-5 style bodies have no logprobs key at all
            choice["logprobs"] = None
        choice["finish_reason"] = finish
        obj = {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": _chat_usage(answer.usage),
            "service_tier": "default",
            "system_fingerprint": fingerprint,
        }
        return _json_reply("openai", call, _pretty(obj) + "\n", _OPENAI_JSON, billed=billed)

    options = body.get("stream_options") or {}
    include_usage = bool(options.get("include_usage"))
    obfuscate = options.get("include_obfuscation", True) is not False

    def chunk(choices: list[Json], usage: Json | None = None) -> bytes:
        obj: Json = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": fingerprint,
            "choices": choices,
        }
        if include_usage:
            obj["usage"] = usage
        if obfuscate:
            obj["obfuscation"] = _obfuscation()
        return _openai_sse(obj)

    def delta(d: Json, finish_reason: str | None = None) -> list[Json]:
        return [{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish_reason}]

    if answer.is_tool:
        first = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "index": 0,
                    "id": call_id,
                    "type": "function",
                    "function": {"name": answer.tool_name, "arguments": ""},
                }
            ],
            "refusal": None,
        }
        events = [chunk(delta(first))] + [
            chunk(delta({"tool_calls": [{"index": 0, "function": {"arguments": frag}}]}))
            for frag in _split_fixed(args_text)
        ]
    else:
        events = [chunk(delta({"role": "assistant", "content": "", "refusal": None}))] + [
            chunk(delta({"content": piece})) for piece in _split_pieces(answer.text)
        ]
    events.append(chunk(delta({}, finish)))
    if include_usage:
        events.append(chunk([], _chat_usage(answer.usage)))
    events.append(b"data: [DONE]\n\n")
    return _stream_reply("openai", call, events, _SSE_UTF8, billed)


def openai_completions(call: Call) -> Reply:
    """The legacy `/v1/completions` endpoint (gpt-3.5-turbo-instruct and friends)."""
    body = call.body
    model = str(body.get("model") or "gpt-3.5-turbo-instruct")
    prompt = body.get("prompt") or ""
    texts = [p for p in (prompt if isinstance(prompt, list) else [prompt]) if isinstance(p, str)]
    stream = bool(body.get("stream"))
    answer = _answer(
        "openai",
        model,
        texts,
        texts[-1] if texts else "",
        None,
        call.knobs,
        pad=not stream,
        cache_read=False,
        reasoning=False,
    )
    u = answer.usage
    usage = {
        "prompt_tokens": u.input_total,
        "completion_tokens": u.output_total,
        "total_tokens": u.input_total + u.output_total,
    }
    billed = u.billed("openai", model)
    cid, created = "cmpl-" + _rand(29), int(time.time())

    def choice(text: str, finish: str | None) -> Json:
        return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}

    if not stream:
        obj = {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [choice(answer.text, "stop")],
            "usage": usage,
        }
        return _json_reply("openai", call, _pretty(obj) + "\n", _OPENAI_JSON, billed=billed)

    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def chunk(choices: list[Json], chunk_usage: Json | None = None) -> bytes:
        obj: Json = {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "choices": choices,
            "model": model,
        }
        if include_usage:
            obj["usage"] = chunk_usage
        return _openai_sse(obj)

    events = [chunk([choice(p, None)]) for p in _split_pieces(answer.text)]
    events.append(chunk([choice("", "stop")]))
    if include_usage:
        events.append(chunk([], usage))
    events.append(b"data: [DONE]\n\n")
    return _stream_reply("openai", call, events, _SSE_UTF8, billed)


def _responses_input(body: Json) -> tuple[list[str], str, bool]:
    """(all prompt texts, last user text, whether the last item is a tool result)."""
    texts = _texts(body.get("instructions")) if isinstance(body.get("instructions"), str) else []
    items = body.get("input")
    if isinstance(items, str):
        return texts + [items], items, False
    items = [i for i in items or [] if isinstance(i, dict)]
    texts += [t for i in items for t in _texts(i.get("content", i.get("output")))]
    users = [i for i in items if i.get("role") == "user"]
    last_user = " ".join(_texts(users[-1].get("content"))) if users else ""
    tool_result = bool(items) and items[-1].get("type") == "function_call_output"
    return texts, last_user, tool_result


def _echo_tools(tools: Any) -> list[Any]:
    out: list[Any] = []
    for tool in tools or []:
        if isinstance(tool, dict) and tool.get("type") == "function":
            out.append(
                {
                    "type": "function",
                    "description": tool.get("description"),
                    "name": tool.get("name"),
                    "parameters": tool.get("parameters"),
                    "strict": tool.get("strict", True),
                }
            )
        else:
            out.append(tool)
    return out


def _responses_usage(u: Usage) -> Json:
    return {
        "input_tokens": u.input_total,
        "input_tokens_details": {"cached_tokens": u.cache_read},
        "output_tokens": u.output_total,
        "output_tokens_details": {"reasoning_tokens": u.reasoning},
        "total_tokens": u.input_total + u.output_total,
    }


def _response_object(
    rid: str,
    created: int,
    model: str,
    body: Json,
    *,
    status: str,
    output: list[Json],
    usage: Json | None,
    service_tier: str,
) -> Json:
    reasoning: Json = body["reasoning"] if isinstance(body.get("reasoning"), dict) else {}
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "billing": {"payer": "developer"},
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": None,
        "frequency_penalty": 0.0,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "presence_penalty": 0.0,
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": None,
        "prompt_cache_retention": None,
        "reasoning": {"effort": reasoning.get("effort"), "summary": None},
        "safety_identifier": None,
        "service_tier": service_tier,
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": _echo_tools(body.get("tools")),
        "top_logprobs": 0,
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": body.get("metadata") or {},
    }


def openai_responses(call: Call) -> Reply:
    body = call.body
    model = str(body.get("model") or "gpt-4.1-nano")
    texts, last_user, tool_result = _responses_input(body)
    tool = (
        None
        if tool_result or body.get("tool_choice") == "none"
        else _openai_tool(body.get("tools"))
    )
    stream = bool(body.get("stream"))
    answer = _answer("openai", model, texts, last_user, tool, call.knobs, pad=not stream)
    billed = answer.usage.billed("openai", model)
    rid, created = "resp_" + _hex(50), int(time.time())
    item_id = ("fc_" if answer.is_tool else "msg_") + _hex(50)
    args_text = _compact(answer.tool_args) if answer.tool_args is not None else ""
    reasoning_item = (
        {"id": "rs_" + _hex(50), "type": "reasoning", "summary": []}
        if answer.usage.reasoning
        else None
    )

    def final_item() -> Json:
        if answer.is_tool:
            return {
                "id": item_id,
                "type": "function_call",
                "status": "completed",
                "arguments": args_text,
                "call_id": "call_" + _rand(24),
                "name": answer.tool_name,
            }
        return {
            "id": item_id,
            "type": "message",
            "status": "completed",
            "content": [
                {"type": "output_text", "annotations": [], "logprobs": [], "text": answer.text}
            ],
            "role": "assistant",
        }

    done_item = final_item()
    output = ([reasoning_item] if reasoning_item else []) + [done_item]
    usage = _responses_usage(answer.usage)

    if not stream:
        obj = _response_object(
            rid,
            created,
            model,
            body,
            status="completed",
            output=output,
            usage=usage,
            service_tier="default",
        )
        # Responses JSON, unlike Chat, has no trailing newline.
        return _json_reply("openai", call, _pretty(obj), _OPENAI_JSON, billed=billed)

    seq = iter(range(10_000))

    def event(kind: str, **fields: Any) -> bytes:
        obj = {"type": kind, "sequence_number": next(seq), **fields}
        return f"event: {kind}\ndata: {_compact(obj)}\n\n".encode()

    def envelope(status: str, out: list[Json], u: Json | None, tier: str) -> Json:
        return _response_object(
            rid, created, model, body, status=status, output=out, usage=u, service_tier=tier
        )

    events = [
        event("response.created", response=envelope("in_progress", [], None, "auto")),
        event("response.in_progress", response=envelope("in_progress", [], None, "auto")),
    ]
    index = 0
    if reasoning_item:
        events.append(event("response.output_item.added", output_index=0, item=reasoning_item))
        events.append(event("response.output_item.done", output_index=0, item=reasoning_item))
        index = 1
    if answer.is_tool:
        events.append(
            event(
                "response.output_item.added",
                output_index=index,
                item={**done_item, "status": "in_progress", "arguments": ""},
            )
        )
        events += [
            event(
                "response.function_call_arguments.delta",
                item_id=item_id,
                output_index=index,
                delta=frag,
                obfuscation=_obfuscation(),
            )
            for frag in _split_fixed(args_text)
        ]
        events.append(
            event(
                "response.function_call_arguments.done",
                item_id=item_id,
                output_index=index,
                arguments=args_text,
            )
        )
    else:
        part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
        ids = {"item_id": item_id, "output_index": index, "content_index": 0}
        events.append(
            event(
                "response.output_item.added",
                output_index=index,
                item={
                    "id": item_id,
                    "type": "message",
                    "status": "in_progress",
                    "content": [],
                    "role": "assistant",
                },
            )
        )
        events.append(event("response.content_part.added", **ids, part=part))
        events += [
            event(
                "response.output_text.delta",
                **ids,
                delta=piece,
                logprobs=[],
                obfuscation=_obfuscation(),
            )
            for piece in _split_pieces(answer.text)
        ]
        events.append(event("response.output_text.done", **ids, text=answer.text, logprobs=[]))
        events.append(
            event("response.content_part.done", **ids, part={**part, "text": answer.text})
        )
    events.append(event("response.output_item.done", output_index=index, item=done_item))
    events.append(
        event("response.completed", response=envelope("completed", output, usage, "default"))
    )
    return _stream_reply("openai", call, events, _SSE_UTF8, billed)


def _float32_vector(seed: str, dims: int) -> list[float]:
    """A deterministic unit vector whose values are exactly representable as float32."""
    rng = random.Random(seed)
    raw = [rng.gauss(0.0, 1.0) for _ in range(dims)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    packed = struct.pack(f"<{dims}f", *(v / norm for v in raw))
    return list(struct.unpack(f"<{dims}f", packed))


def openai_embeddings(call: Call) -> Reply:
    body = call.body
    model = str(body.get("model") or "text-embedding-3-small")
    raw = body.get("input", "")
    # A list of ints is one pre-tokenised input; a list of anything else is a batch.
    inputs = (
        [raw]
        if isinstance(raw, str)
        or (isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw))
        else list(raw)
    )
    default_dims = 3072 if "3-large" in model else 1536
    dims = int(body.get("dimensions") or default_dims)
    as_base64 = body.get("encoding_format") == "base64"
    tokens = 0
    data = []
    for index, item in enumerate(inputs):
        tokens += max(1, _words(item) if isinstance(item, str) else len(item))
        vector = _float32_vector(_compact([model, item]), dims)
        encoded: Any = (
            base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            if as_base64
            else [float(f"{v:.9g}") for v in vector]
        )
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    obj = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    billed = Usage(tokens, 0, 0, 0, 0).billed("openai", model)
    return _json_reply("openai", call, _pretty(obj) + "\n", _OPENAI_JSON, billed=billed)


# ---------------------------------------------------------------------------------------------
# Anthropic
# ---------------------------------------------------------------------------------------------


def _anthropic_pad(payload: str) -> str:
    """Insert the random run of spaces Anthropic puts before a payload's final `}`."""
    if random.random() < 0.2:
        return payload
    return payload[:-1] + " " * random.randint(1, 15) + "}"


def _anthropic_event(kind: str, obj: Json) -> bytes:
    return f"event: {kind}\ndata: {_anthropic_pad(_compact(obj))}\n\n".encode()


_ANTHROPIC_PING = b'event: ping\ndata: {"type": "ping"}\n\n'


def _anthropic_usage(u: Usage, output_tokens: int) -> Json:
    return {
        "input_tokens": u.prompt,
        "cache_creation_input_tokens": u.cache_write,
        "cache_read_input_tokens": u.cache_read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": u.cache_write,
            "ephemeral_1h_input_tokens": 0,
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
        "inference_geo": "not_available",
    }


def _anthropic_tool(body: Json) -> ToolSpec | None:
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    if (
        messages
        and isinstance(messages[-1].get("content"), list)
        and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in messages[-1]["content"]
        )
    ):
        return None  # the model has its tool result and now answers in text
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "none":
        return None
    for tool in body.get("tools") or []:
        if isinstance(tool, dict) and tool.get("name") and "input_schema" in tool:
            return ToolSpec(str(tool["name"]), tool.get("input_schema") or {})
    return None


def anthropic_messages(call: Call) -> Reply:
    body = call.body
    model = str(body.get("model") or "claude-sonnet-4-6")
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    texts = _texts(body.get("system")) + [t for m in messages for t in _texts(m.get("content"))]
    users = [m for m in messages if m.get("role") == "user"]
    last_user = " ".join(_texts(users[-1].get("content"))) if users else ""
    stream = bool(body.get("stream"))
    # Anthropic counts thinking inside output_tokens and reports no separate reasoning figure.
    answer = _answer(
        "anthropic",
        model,
        texts,
        last_user,
        _anthropic_tool(body),
        call.knobs,
        pad=not stream,
        cache_write=True,
        reasoning=False,
    )
    u = answer.usage
    billed = u.billed("anthropic", model)
    msg_id = "msg_01" + _rand(22, _BASE58)
    tool_id = "toolu_01" + _rand(22, _BASE58)
    stop_reason = "tool_use" if answer.is_tool else "end_turn"

    if not stream:
        block: Json = (
            {"type": "tool_use", "id": tool_id, "name": answer.tool_name, "input": answer.tool_args}
            if answer.is_tool
            else {"type": "text", "text": answer.text}
        )
        obj = {
            "model": model,
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "content": [block],
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": _anthropic_usage(u, u.output_total),
        }
        return _json_reply("anthropic", call, _compact(obj), "application/json", billed=billed)

    start_message: Json = {
        "model": model,
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": _anthropic_usage(u, 1),
    }
    if answer.is_tool:
        first_block: Json = {
            "type": "tool_use",
            "id": tool_id,
            "name": answer.tool_name,
            "input": {},
        }
        args_text = json.dumps(answer.tool_args, ensure_ascii=False)
        deltas = [
            {"type": "input_json_delta", "partial_json": frag}
            for frag in [""] + _split_fixed(args_text)
        ]
    else:
        first_block = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": p} for p in _split_pieces(answer.text)]
    events = [
        _anthropic_event("message_start", {"type": "message_start", "message": start_message}),
        _anthropic_event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": first_block},
        ),
        _ANTHROPIC_PING,
    ]
    events += [
        _anthropic_event(
            "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d}
        )
        for d in deltas
    ]
    if call.knobs.stream_error:
        # Overloaded mid-stream: the 200 is already sent, so the error arrives as an event and
        # the stream ends without message_stop. Nothing is billed.
        error = {
            "type": "error",
            "error": {"details": None, "type": "overloaded_error", "message": "Overloaded"},
        }
        events = events[:4] + [_anthropic_event("error", error)]
        return _stream_reply("anthropic", call, events, _SSE_UTF8, None, close_after=True)
    # 2026 recordings repeat the cumulative input/cache counts in message_delta.
    final_usage = {
        "input_tokens": u.prompt,
        "cache_creation_input_tokens": u.cache_write,
        "cache_read_input_tokens": u.cache_read,
        "output_tokens": u.output_total,
    }
    events += [
        _anthropic_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _anthropic_event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": final_usage,
            },
        ),
        _anthropic_event("message_stop", {"type": "message_stop"}),
    ]
    return _stream_reply("anthropic", call, events, _SSE_UTF8, billed)


# ---------------------------------------------------------------------------------------------
# Gemini
# ---------------------------------------------------------------------------------------------

_GEMINI_JSON = "application/json; charset=UTF-8"


def _gemini_tool(body: Json) -> ToolSpec | None:
    contents = [c for c in body.get("contents") or [] if isinstance(c, dict)]
    if contents and any(
        isinstance(p, dict) and "functionResponse" in p for p in contents[-1].get("parts") or []
    ):
        return None
    for tool in body.get("tools") or []:
        for decl in (tool or {}).get("functionDeclarations") or []:
            if isinstance(decl, dict) and decl.get("name"):
                params = decl.get("parameters") or decl.get("parametersJsonSchema") or {}
                return ToolSpec(str(decl["name"]), params)
    return None


def _gemini_usage(u: Usage, candidates: int) -> Json:
    meta: Json = {
        "promptTokenCount": u.input_total,
        "candidatesTokenCount": candidates,
        "totalTokenCount": u.input_total + candidates + u.reasoning,
    }
    if u.cache_read:
        meta["cachedContentTokenCount"] = u.cache_read
    meta["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": u.input_total}]
    if u.cache_read:
        meta["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": u.cache_read}]
    if u.reasoning:
        meta["thoughtsTokenCount"] = u.reasoning
    meta["serviceTier"] = "standard"
    return meta


def _gemini_chunk(
    model: str, response_id: str, parts: list[Json], finish: bool, usage: Json
) -> Json:
    candidate: Json = {"content": {"parts": parts, "role": "model"}}
    if finish:
        candidate["finishReason"] = "STOP"
    candidate["index"] = 0
    return {
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": model,
        "responseId": response_id,
    }


def gemini_generate(call: Call, *, stream: bool) -> Reply:
    body = call.body
    model = call.path_params["model"]
    contents = [c for c in body.get("contents") or [] if isinstance(c, dict)]
    texts = _texts(body.get("systemInstruction")) + [
        t for c in contents for t in _texts(c.get("parts"))
    ]
    users = [c for c in contents if c.get("role", "user") == "user"]
    last_user = " ".join(_texts(users[-1].get("parts"))) if users else ""
    answer = _answer(
        "gemini", model, texts, last_user, _gemini_tool(body), call.knobs, pad=not stream
    )
    u = answer.usage
    billed = u.billed("gemini", model)
    response_id = _rand(23, _URLSAFE)

    if answer.is_tool:
        pieces: list[str] = []
        part_sets: list[list[Json]] = [
            [{"functionCall": {"name": answer.tool_name, "args": answer.tool_args}}]
        ]
    else:
        pieces = _split_pieces(answer.text) if stream else [answer.text]
        part_sets = [[{"text": p}] for p in pieces]
    chunks = []
    for i, parts in enumerate(part_sets):
        # usageMetadata is cumulative on every chunk; the last one carries the totals.
        seen = _words("".join(pieces[: i + 1])) if pieces else u.output
        last = i == len(part_sets) - 1
        chunks.append(
            _gemini_chunk(
                model, response_id, parts, last, _gemini_usage(u, u.output if last else seen)
            )
        )

    if not stream:
        return _json_reply("gemini", call, _pretty(chunks[0]) + "\n", _GEMINI_JSON, billed=billed)
    if call.query.get("alt") == ["sse"]:
        events = [
            b"data: "
            + json.dumps(c, separators=(",", ": "), ensure_ascii=False).encode()
            + b"\r\n\r\n"
            for c in chunks
        ]
        return _stream_reply("gemini", call, events, "text/event-stream", billed)
    # Without alt=sse the body is one JSON array, streamed element by element: "[{…}\n,\r\n{…}\n]".
    events = [(b"[" if i == 0 else b"\n,\r\n") + _pretty(c).encode() for i, c in enumerate(chunks)]
    events.append(b"\n]")
    return _stream_reply("gemini", call, events, _GEMINI_JSON, billed, sse=False)


def gemini_embed(call: Call, *, batch: bool) -> Reply:
    """`models/{m}:embedContent` → {"embedding": {"values"}}; `:batchEmbedContents` →
    {"embeddings": [{"values"}, ...]}. Gemini JSON style (2-space indent, trailing newline); no
    usage, as the real API sends none. Deterministic: the vector depends on model and text."""
    model = call.path_params.get("model") or "gemini-embedding-001"
    listed = call.body.get("requests", [])
    requests = [r for r in listed if isinstance(r, dict)] if batch else [call.body]
    out = []
    for req in requests:
        parts = (req.get("content") or {}).get("parts") or []
        text = "\n".join(p.get("text", "") for p in parts if isinstance(p, dict))
        dims = int(req.get("outputDimensionality") or req.get("output_dimensionality") or 3072)
        vector = _float32_vector(_compact([model, text]), dims)
        out.append({"values": [float(f"{v:.9g}") for v in vector]})
    obj = {"embeddings": out} if batch else {"embedding": out[0]}
    return _json_reply("gemini", call, _pretty(obj) + "\n", _GEMINI_JSON)


# ---------------------------------------------------------------------------------------------
# Routing
# ---------------------------------------------------------------------------------------------

Builder = Callable[[Call], Reply]

# Suffix patterns, so any path prefix works (`/v1/...`, `/openai/v1/...`, `/proxy/x/v1/...`).
_ROUTES: list[tuple[re.Pattern[str], str, Builder]] = [
    (re.compile(r"/v1/chat/completions$"), "openai", openai_chat),
    (re.compile(r"/v1/responses$"), "openai", openai_responses),
    (re.compile(r"/v1/embeddings$"), "openai", openai_embeddings),
    (re.compile(r"/v1/completions$"), "openai", openai_completions),
    (re.compile(r"/v1/messages$"), "anthropic", anthropic_messages),
    (
        re.compile(r"/v1(?:beta)?/(?:tuned)?[mM]odels/(?P<model>[^/:]+):generateContent$"),
        "gemini",
        functools.partial(gemini_generate, stream=False),
    ),
    (
        re.compile(r"/v1(?:beta)?/(?:tuned)?[mM]odels/(?P<model>[^/:]+):streamGenerateContent$"),
        "gemini",
        functools.partial(gemini_generate, stream=True),
    ),
    (
        re.compile(r"/v1(?:beta)?/(?:tuned)?[mM]odels/(?P<model>[^/:]+):embedContent$"),
        "gemini",
        functools.partial(gemini_embed, batch=False),
    ),
    (
        re.compile(r"/v1(?:beta)?/(?:tuned)?[mM]odels/(?P<model>[^/:]+):batchEmbedContents$"),
        "gemini",
        functools.partial(gemini_embed, batch=True),
    ),
]


def _accepts_gzip(header: str | None) -> bool:
    for token in (header or "").split(","):
        name, _, params = token.strip().partition(";")
        if name.strip().lower() == "gzip" and params.replace(" ", "") not in ("q=0", "q=0.0"):
            return True
    return False


def build_reply(
    method: str, path: str, query: str, get_header: Callable[[str], str | None], body: bytes
) -> Reply:
    """Turn one decoded request into a reply. Pure apart from randomness; no I/O."""
    knobs = Knobs.from_headers(get_header)
    for pattern, provider, builder in _ROUTES:
        match = pattern.search(path)
        if match is None:
            continue
        call = Call(
            path,
            parse_qs(query),
            {},
            knobs,
            _accepts_gzip(get_header("accept-encoding")),
            match.groupdict(),
        )
        if method != "POST":
            return error_reply(provider, 404, call, f"Invalid method {method} for {path}.")
        if knobs.status is not None:
            return error_reply(provider, knobs.status, call)
        try:
            parsed = json.loads(body) if body else {}
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            return error_reply(provider, 400, call, "Could not parse the JSON body of the request.")
        return builder(
            Call(call.path, call.query, parsed, knobs, call.accept_gzip, call.path_params)
        )
    return error_reply("openai", 404, None, f"Invalid URL ({method} {path})")


# ---------------------------------------------------------------------------------------------
# Request body decoding
# ---------------------------------------------------------------------------------------------


def _zstd_decompress(data: bytes) -> bytes:
    try:
        from backports import zstd

        return bytes(zstd.decompress(data))
    except ImportError:
        import zstandard  # type: ignore[import-not-found]

        return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(data))


def _brotli_decompress(data: bytes) -> bytes:
    import brotli  # type: ignore[import-untyped]

    return bytes(brotli.decompress(data))


def _inflate(data: bytes) -> bytes:
    try:
        return zlib.decompress(data)
    except zlib.error:  # some clients send raw deflate without the zlib header
        return zlib.decompress(data, -zlib.MAX_WBITS)


_DECODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.decompress,
    "x-gzip": gzip.decompress,
    "deflate": _inflate,
    "br": _brotli_decompress,
    "zstd": _zstd_decompress,
    "identity": lambda data: data,
}


def decode_body(data: bytes, content_encoding: str | None) -> bytes:
    """Undo ``content-encoding`` (applied in order, so undone in reverse). Raises ValueError."""
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
    for coding in reversed(codings):
        decoder = _DECODERS.get(coding)
        if decoder is None:
            raise ValueError(f"unsupported content-encoding {coding!r}")
        try:
            data = decoder(data)
        except Exception as exc:  # any codec failure means a bad request
            raise ValueError(f"cannot decode {coding}: {exc}") from exc
    return data


# ---------------------------------------------------------------------------------------------
# The HTTP server
# ---------------------------------------------------------------------------------------------

_REASONS = {529: "Site is overloaded"}


def _with_variant(get: Callable[[str], str | None], variant: str, name: str) -> str | None:
    return variant if name.lower() == "x-fake-vary" else get(name)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every reply has a length or is chunked
    server_version = "cloudflare"
    timeout = 120  # idle keep-alive connections eventually release their thread
    server: _Server

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests run thousands of requests; stderr noise helps nobody

    def setup(self) -> None:
        context = self.server.ssl_context
        if context is not None:
            # Handshake here, in the connection's own thread, so one slow client can't stall
            # the accept loop.
            self.request.settimeout(self.timeout)
            tls = context.wrap_socket(self.request, server_side=True, do_handshake_on_connect=False)
            try:
                tls.do_handshake()
            except BaseException:
                tls.close()
                raise
            self.request = tls
        self.server.track(self.request)
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.request)
            if self.server.ssl_context is not None:
                # socketserver only closes the raw socket, which the TLS wrapper detached.
                _close_quietly(self.request)

    def _serve(self) -> None:
        try:
            raw = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            self._write(error_reply("openai", 400, None, "Malformed request body."))
            return
        split = urlsplit(self.path)
        headers = [(k, v) for k, v in self.headers.items()]
        try:
            body = decode_body(raw, self.headers.get("content-encoding"))
            reply: Reply | None = None
        except ValueError as exc:
            body, reply = raw, error_reply("openai", 400, None, str(exc))
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        self.server.upstream._record(
            RecordedRequest(self.command, split.path, split.query, headers, body, parsed)
        )
        if reply is None:
            get = self.headers.get
            if self.server.upstream.vary:
                variant = str(self.server.upstream._next_variant() % self.server.upstream.vary)
                get = functools.partial(_with_variant, get, variant)
            reply = build_reply(self.command, split.path, split.query, get, body)
            rewrite = self.server.upstream.rewrite
            if rewrite is not None:
                reply = rewrite(reply)
        try:
            self._write(reply)
        except (OSError, ValueError):
            self.close_connection = True  # the client went away; nothing left to do

    do_POST = do_GET = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _serve

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            return self._read_chunked()
        length = int(self.headers.get("content-length") or 0)
        if length < 0:
            raise ValueError("negative content-length")
        data = self.rfile.read(length)
        if len(data) != length:
            raise ValueError("truncated body")
        return data

    def _read_chunked(self) -> bytes:
        parts = []
        while True:
            line = self.rfile.readline(65537)
            if not line:
                raise ValueError("truncated chunked body")
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                break
            parts.append(self.rfile.read(size))
            self.rfile.readline()  # the CRLF after each chunk
        while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
            pass  # skip trailers
        return b"".join(parts)

    def _write(self, reply: Reply) -> None:
        streaming = reply.events is not None
        if not streaming and reply.delay_s:
            time.sleep(reply.delay_s)
        self.send_response(reply.status, _REASONS.get(reply.status))
        for name, value in reply.headers:
            self.send_header(name, value)
        chunked = streaming and self.request_version != "HTTP/1.0"
        if not streaming:
            self.send_header("content-length", str(len(reply.body)))
        elif chunked:
            self.send_header("transfer-encoding", "chunked")
        else:
            self.close_connection = True  # HTTP/1.0 stream: the end is marked by closing
        if reply.close_after:
            self.send_header("connection", "close")
        if not streaming:
            # Bill before the last byte, so a test that just got its response sees the entry.
            self.server.upstream._bill(reply.billed)
            self.end_headers()
            self.wfile.write(reply.body)
            return
        self.end_headers()
        self._write_events(reply, reply.events or [], chunked)

    def _write_events(self, reply: Reply, events: list[bytes], chunked: bool) -> None:
        cut = reply.cut_after
        for i, data in enumerate(events):
            if cut is not None and i >= cut:
                break
            if i and reply.delay_s:
                time.sleep(reply.delay_s)
            frame = b"%x\r\n%s\r\n" % (len(data), data) if chunked else data
            last = i == len(events) - 1
            if last and cut is None:
                self.server.upstream._bill(reply.billed)
                if chunked:
                    frame += b"0\r\n\r\n"
            # One write per event: the socket writer is unbuffered, so each event is flushed.
            self.wfile.write(frame)
        if cut is not None:
            # Drop the connection mid-body: no terminating chunk, no TLS close_notify.
            self.close_connection = True


def _close_quietly(sock: socket.socket) -> None:
    try:
        # The base-class shutdown works on the fd even for an SSLSocket, and sends a FIN
        # without tearing down the TLS object another thread may still be using.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # 100 clients connecting at once must not overflow the backlog

    def __init__(self, port: int, upstream: FakeUpstream, ssl_context: ssl.SSLContext | None):
        self.upstream = upstream
        self.ssl_context = ssl_context
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__((HOST, port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn), which can hang offline.
        TCPServer.server_bind(self)
        self.server_name, self.server_port = HOST, self.server_address[1]

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small SSE writes go now
        self.upstream._count_connection()
        return sock, addr

    def track(self, sock: socket.socket) -> None:
        with self._open_lock:
            self._open.add(sock)

    def untrack(self, sock: socket.socket) -> None:
        with self._open_lock:
            self._open.discard(sock)

    def close_all(self) -> None:
        with self._open_lock:
            open_socks, self._open = list(self._open), set()
        for sock in open_socks:
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # wakes the blocked reader
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (OSError, ValueError)):
            return  # resets, TLS failures, clients that hang up: all normal for a test server
        super().handle_error(request, client_address)


# ---------------------------------------------------------------------------------------------
# Certificates
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _certificate_pem() -> tuple[bytes, bytes]:
    """A self-signed ECDSA cert for 127.0.0.1/localhost/::1, made once per process.

    It is marked as a CA (critical basicConstraints, keyCertSign, SKI/AKI) so it can be its own
    trust anchor even under OpenSSL's strict X.509 checks (Python 3.13's default).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llmreel fake upstream")])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


class FakeUpstream:
    """A fake OpenAI/Anthropic/Gemini server on 127.0.0.1, in a background thread.

    ``FakeUpstream(tls=True, port=0)``; use as a context manager or call start()/stop().
    """

    def __init__(self, tls: bool = True, port: int = 0) -> None:
        self.tls = tls
        self._requested_port = port
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._billed: list[Json] = []
        self._connections = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._tmpdir: str | None = None
        self._cert_path: str | None = None
        #: A test hook: changes every reply on purpose (a provider that changed its answers).
        self.rewrite: Callable[[Reply], Reply] | None = None
        #: Answer calls in `vary` different ways, in turn (as `x-fake-vary: <call number>`): a
        #: model that is not deterministic. 0, the default: the same request, the same answer.
        self.vary = 0
        self._variants = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        if self._server is not None:
            return self
        self._tmpdir = tempfile.mkdtemp(prefix="llmreel-fakeupstream-")
        cert_pem, key_pem = _certificate_pem()
        cert_path = Path(self._tmpdir, "cert.pem")
        key_path = Path(self._tmpdir, "key.pem")
        cert_path.write_bytes(cert_pem)
        key_path.write_bytes(key_pem)
        self._cert_path = str(cert_path)
        context = None
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert_path, key_path)
            context.set_alpn_protocols(["http/1.1"])  # we only speak HTTP/1.1; refuse h2
        self._server = _Server(self._requested_port, self, context)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            args=(0.05,),
            name=f"fakeupstream:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()  # returns within one poll interval
        server.server_close()
        server.close_all()  # idle keep-alive connections would otherwise linger
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- properties --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeUpstream is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"

    @property
    def cert_path(self) -> str:
        """PEM of the self-signed server certificate; trust it as a CA."""
        if self._cert_path is None:
            raise RuntimeError("FakeUpstream is not running")
        return self._cert_path

    def ssl_context(self) -> ssl.SSLContext:
        """A client SSLContext that trusts this server (for httpx/httpx2 ``verify=``)."""
        return ssl.create_default_context(cafile=self.cert_path)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def billed(self) -> list[Json]:
        with self._lock:
            return list(self._billed)

    @property
    def connections(self) -> int:
        with self._lock:
            return self._connections

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._billed.clear()
            self._connections = 0
            self._variants = 0
            self.vary = 0

    # -- called by the server threads --------------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _bill(self, entry: Json | None) -> None:
        if entry is not None:
            with self._lock:
                self._billed.append(entry)

    def _next_variant(self) -> int:
        with self._lock:
            self._variants += 1
            return self._variants

    def _count_connection(self) -> None:
        with self._lock:
            self._connections += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake OpenAI/Anthropic/Gemini upstream.")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--plain", action="store_true", help="serve plain HTTP instead of TLS")
    args = parser.parse_args(argv)
    with FakeUpstream(tls=not args.plain, port=args.port) as upstream:
        print(f"url:  {upstream.url}", flush=True)
        if upstream.tls:
            print(f"cert: {upstream.cert_path}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
