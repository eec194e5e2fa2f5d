"""The request a playground run or a probe sends: a logged exchange's request, editable, and the
key that goes with it. Pure: the environment is passed in.

A `Draft` is the URL, the JSON body and the non-secret headers of the original request (the
log masks credentials, so they are never in a draft). The key is added when the request is sent
(`credential`): a key typed in the page, or the provider's key from the environment. An
environment key goes only to the provider's own hosts or to the host the exchange was sent to
(where the agent sent that key already): a URL edited to another host needs a typed key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from llmreel.core.calls import Endpoint
from llmreel.core.credentials import is_secret_header, is_secret_name, key_source
from llmreel.providers import DEFAULT_HOSTS, HostMap, classify

__all__ = ["CannotAsk", "Draft", "credential", "host_of"]

Json = dict[str, Any]
# Framing and connection headers (recomputed when sent), llmreel's own, and SDK telemetry.
_SKIPPED: Final = frozenset({"content-length", "host", "accept-encoding", "connection",
                             "transfer-encoding", "keep-alive", "te", "upgrade"})  # fmt: skip
_MAX_HEADERS: Final = 64


class CannotAsk(Exception):
    """The request cannot be sent (offline, no key, no proxy); the message says what to do."""

    def __init__(self, message: str, reason: str = "cannot_ask") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(slots=True)
class Draft:
    """What to send: `url`, `body` (a JSON object) and extra non-secret `headers`."""

    url: str
    body: Json
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Draft:
        """The request of a log record. Raises CannotAsk when its body is not a JSON object."""
        body = record.get("request_body")
        if not isinstance(body, dict):
            raise CannotAsk(
                f"exchange {record.get('id')} has no JSON request body to send again "
                "(logged without bodies, or not JSON)",
                "no_body",
            )
        headers = {}
        for pair in record.get("request_headers") or []:
            if isinstance(pair, list | tuple) and len(pair) == 2 and _keep(str(pair[0])):
                headers[str(pair[0]).lower()] = str(pair[1])
        return cls(_clean_url(str(record.get("url") or "")), body, headers,
                   str(record.get("method") or "POST"))  # fmt: skip

    @classmethod
    def from_json(cls, value: Any) -> Draft:
        """A draft as the page or a script sends it: {"url", "body", "headers"?}."""
        if not isinstance(value, dict):
            raise ValueError('"request" is {"url": "...", "body": {...}, "headers": {...}}')
        url, body = value.get("url"), value.get("body")
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            raise ValueError('"request.url" must be an http:// or https:// URL')
        if not urlsplit(url).hostname:
            raise ValueError('"request.url" needs a host')
        if not isinstance(body, dict):
            raise ValueError('"request.body" must be a JSON object')
        raw = value.get("headers") or {}
        if not isinstance(raw, dict) or len(raw) > _MAX_HEADERS:
            raise ValueError('"request.headers" is an object of at most 64 names and values')
        headers = {str(k).lower(): str(v) for k, v in raw.items() if _keep(str(k))}
        return cls(_clean_url(url), body, headers)

    def as_json(self) -> Json:
        return {"url": self.url, "body": self.body, "headers": self.headers}

    @property
    def hostport(self) -> str:
        return host_of(self.url)

    def endpoint(self, hosts: HostMap = DEFAULT_HOSTS) -> Endpoint | None:
        return classify(self.method, self.hostport, urlsplit(self.url).path, hosts)


def host_of(url: str) -> str:
    """`host` or `host:port` of a URL (IPv6 in brackets), as the host map keys hosts."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return ""
    host = parts.hostname or ""
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}" if port else shown


def _keep(name: str) -> bool:
    lowered = name.lower()
    return not (
        lowered in _SKIPPED
        or is_secret_header(lowered)
        or lowered.startswith(("llmreel-", "proxy-", "x-fake-"))
    )


def _clean_url(url: str) -> str:
    """`url` without credential query parameters (the log has them masked anyway)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if not is_secret_name(k)]  # fmt: skip
    return urlunsplit(parts._replace(query=urlencode(query), fragment=""))


def credential(
    draft: Draft,
    *,
    original_host: str,
    typed_key: str,
    environ: Mapping[str, str],
    hosts: HostMap = DEFAULT_HOSTS,
) -> tuple[str, str] | None:
    """The (header, value) that carries the key for `draft`, or None when its API needs none.

    Raises CannotAsk when a key is needed and there is none that may go to this host.
    """
    ep = draft.endpoint(hosts)
    if ep is None:
        raise CannotAsk(
            f"{draft.url} is not an LLM API URL llmreel knows (chat/completions, responses, "
            "messages, generateContent...); give the full endpoint URL",
            "bad_url",
        )
    source = key_source(ep.provider, ep.api)
    if typed_key:
        if source is None:
            return "authorization", f"Bearer {typed_key}"
        return source.header, source.value(typed_key)
    if source is None:
        return None
    home = hosts.provider_for(draft.hostport)
    trusted = draft.hostport == original_host or home in (ep.provider, ep.api.split(".", 1)[0])
    key = next((environ[n] for n in source.env if environ.get(n)), "")
    if key and trusted:
        return source.header, source.value(key)
    names = " or ".join(source.env)
    if key:
        raise CannotAsk(
            f"{draft.hostport} is neither the exchange's host nor one of the provider's own "
            f"hosts, so {names} from the environment is not sent there: type a key for it",
            "no_key",
        )
    raise CannotAsk(f"no {names} in the environment: set it, or type a key", "no_key")
