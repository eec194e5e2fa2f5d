"""Cache keys: a canonical, secret-free form of a request, and its fixed-length digest.

Determinism lives here. Two requests get the same key exactly when an LLM would see the same
input: method, scheme, host, port, path, the sorted query without credentials, the body as
canonical JSON, and a short allowlist of headers that change behaviour. Credentials, SDK
versions, request ids and tracing headers never enter the key.

Pure: no I/O, no mitmproxy.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from llmreel.core.credentials import is_secret_name

#: Request headers that change what the upstream does, and so belong in the key.
DEFAULT_KEY_HEADERS = frozenset(
    {
        "anthropic-version",
        "anthropic-beta",
        "openai-beta",
        "x-goog-api-client-version",  # never set by SDKs today; harmless
    }
)
# x-goog-api-client is deliberately absent: it carries the SDK version, like user-agent.
_DEFAULT_PORTS = {"http": 80, "https": 443}
KEY_LENGTH = 32  # hex digits of SHA-256 kept: 128 bits


@dataclass(frozen=True, slots=True)
class KeyConfig:
    """What, beyond the defaults, shapes a key.

    `ignore_fields` are dotted JSON paths removed from the body before keying, e.g. `user` or
    `metadata.session_id`; `*` matches every list item or object member (`messages.*.id`).
    """

    ignore_fields: tuple[str, ...] = ()
    key_headers: frozenset[str] = DEFAULT_KEY_HEADERS
    _paths: tuple[tuple[str, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        paths = tuple(tuple(p.split(".")) for p in self.ignore_fields if p)
        object.__setattr__(self, "_paths", paths)


DEFAULT_KEY_CONFIG = KeyConfig()


def parse_body(body: bytes) -> Any:
    """The body as parsed JSON, or a tagged form of its bytes (None when empty).

    This is what the client sent; behaviour (the model, streaming) is read from it, while the
    key is made from `canonical_body`, which may leave fields out.
    """
    if not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        # Not JSON (or JSON orjson cannot hold, e.g. integers over 64 bits): key on the bytes.
        try:
            return {"$text": body.decode("utf-8")}
        except UnicodeDecodeError:
            return {"$base64": base64.b64encode(body).decode("ascii")}


def without_ignored(parsed: Any, config: KeyConfig = DEFAULT_KEY_CONFIG) -> Any:
    """`parsed` minus the configured ignored fields; a copy whenever anything could be removed."""
    if not config._paths or not isinstance(parsed, dict | list):
        return parsed
    copy = orjson.loads(orjson.dumps(parsed))
    for path in config._paths:
        _drop(copy, path)
    return copy


def canonical_body(body: bytes, config: KeyConfig = DEFAULT_KEY_CONFIG) -> Any:
    """The body as parsed JSON (minus ignored fields), or a tagged form of its bytes."""
    return without_ignored(parse_body(body), config)


def _drop(node: Any, path: Sequence[str]) -> None:
    head, rest = path[0], path[1:]
    children: Iterable[Any]
    if isinstance(node, dict):
        if head == "*":
            if not rest:
                node.clear()
                return
            children = list(node.values())
        elif not rest:
            node.pop(head, None)
            return
        else:
            children = [node[head]] if head in node else []
    elif isinstance(node, list):
        if head == "*":
            if not rest:
                node.clear()
                return
            children = node
        elif head.isdigit() and int(head) < len(node):
            if not rest:
                del node[int(head)]
                return
            children = [node[int(head)]]
        else:
            return
    else:
        return
    for child in children:
        _drop(child, rest)


def canonical_request(
    method: str,
    scheme: str,
    host: str,
    port: int,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Iterable[tuple[str, str]],
    body: bytes,
    config: KeyConfig = DEFAULT_KEY_CONFIG,
    *,
    parsed_body: Any = None,
) -> dict[str, Any]:
    """A readable, JSON-ready description of everything that is keyed.

    `body` must already be content-decoded; `path` excludes the query string. A caller that
    already parsed the body (`parse_body`) passes it as `parsed_body` to save a second parse.
    """
    kept_headers: dict[str, str] = {}
    for name, value in headers:
        lowered = name.lower()
        if lowered in config.key_headers:
            # Repeated headers (anthropic-beta may be) are joined in a stable order.
            previous = kept_headers.get(lowered)
            kept_headers[lowered] = value if previous is None else f"{previous},{value}"
    for name, value in kept_headers.items():
        kept_headers[name] = ",".join(sorted(v.strip() for v in value.split(",")))
    scheme = scheme.lower()
    canonical: dict[str, Any] = {
        "method": method.upper(),
        "scheme": scheme,
        "host": host.lower().rstrip("."),
        "port": port or _DEFAULT_PORTS.get(scheme, 0),
        "path": path,
        "query": sorted([k, v] for k, v in query if not is_secret_name(k)),
        "headers": kept_headers,
        "body": canonical_body(body, config)
        if parsed_body is None
        else without_ignored(parsed_body, config),
    }
    return canonical


def request_digest(canonical: dict[str, Any]) -> str:
    """Fixed-length hex digest of a canonical request."""
    encoded = orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(encoded).hexdigest()[:KEY_LENGTH]
