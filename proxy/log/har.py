"""HAR 1.2 export of log records, for browsers' devtools and HAR viewers.

Pure functions; no I/O. `har_chunks` yields the document piece by piece so that an export of
thousands of exchanges never holds them all in memory. Streamed responses appear with their full
body; an exchange that got no response still appears, with status 0 and an `_error` field.
"""

from __future__ import annotations

import http
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import orjson

from llmreel.core.wire import header

__all__ = ["har_chunks", "har_entry"]

HAR_VERSION: Final = "1.2"
#: What an entry's `_llmreel` object repeats from the record (custom fields start with "_").
_LLMREEL_FIELDS: Final = ("id", "provider", "model", "operation", "cache", "namespace", "key",
                          "usage", "cost_usd", "ttfc_s", "recorded")  # fmt: skip


def har_entry(record: Mapping[str, Any]) -> dict[str, Any]:
    """One HAR entry for a full log record (with headers and bodies)."""
    duration_ms = _ms(record.get("duration_s")) or 0.0
    # Time to the first byte is the best "wait" we know: ttfc for streams, otherwise the
    # whole upstream time; what remains is "receive".
    wait_ms = _ms(record.get("ttfc_s"))
    if wait_ms is None:
        wait_ms = _ms(record.get("upstream_s"))
    if wait_ms is None:
        wait_ms = duration_ms
    wait_ms = min(wait_ms, duration_ms)
    request_headers = _pairs(record.get("request_headers"))
    response_headers = _pairs(record.get("response_headers"))
    status = record.get("status")
    entry: dict[str, Any] = {
        "startedDateTime": record.get("time") or "1970-01-01T00:00:00.000Z",
        "time": duration_ms,
        "request": {
            "method": record.get("method") or "POST",
            "url": record.get("url") or "",
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": _har_headers(request_headers),
            "queryString": _query(record.get("url")),
            "headersSize": -1,
            "bodySize": _size(record.get("request_body_size")),
        },
        "response": {
            "status": status if isinstance(status, int) else 0,
            "statusText": _status_text(status),
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": _har_headers(response_headers),
            "content": _content(record, "response", response_headers),
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": _size(record.get("response_body_size")),
        },
        "cache": {},
        "timings": {
            "blocked": -1,
            "dns": -1,
            "connect": -1,
            "ssl": -1,
            "send": 0,
            "wait": wait_ms,
            "receive": max(duration_ms - wait_ms, 0.0),
        },
        "comment": f"llmreel {record.get('id')} cache={record.get('cache')}",
        "_llmreel": {k: record.get(k) for k in _LLMREEL_FIELDS},
    }
    if record.get("request_body_format") is not None:
        content = _content(record, "request", request_headers)
        entry["request"]["postData"] = {
            "mimeType": content["mimeType"],
            "text": content.get("text", ""),
            "params": [],
        }
        if content.get("encoding"):
            entry["request"]["postData"]["_encoding"] = content["encoding"]
    if record.get("error"):
        entry["_error"] = record["error"]
    return entry


def har_chunks(
    records: Iterable[Mapping[str, Any]], *, creator_version: str = "0"
) -> Iterator[bytes]:
    """The HAR document, in pieces to write one after the other."""
    yield (
        b'{"log":{"version":"' + HAR_VERSION.encode() + b'","creator":'
        + orjson.dumps({"name": "llmreel", "version": creator_version})
        + b',"pages":[],"entries":['
    )  # fmt: skip
    first = True
    for record in records:
        yield (b"" if first else b",") + orjson.dumps(har_entry(record), default=str)
        first = False
    yield b"]}}\n"


def _ms(seconds: object) -> float | None:
    if isinstance(seconds, int | float) and seconds >= 0:
        return round(float(seconds) * 1000, 3)
    return None


def _size(value: object) -> int:
    return value if isinstance(value, int) else -1


def _pairs(headers: object) -> list[tuple[str, str]]:
    if not isinstance(headers, list):
        return []
    return [(str(h[0]), str(h[1])) for h in headers if isinstance(h, list | tuple) and len(h) == 2]


def _har_headers(headers: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in headers]


def _query(url: object) -> list[dict[str, str]]:
    if not isinstance(url, str):
        return []
    try:
        query = urlsplit(url).query
    except ValueError:
        return []
    return [{"name": k, "value": v} for k, v in parse_qsl(query, keep_blank_values=True)]


def _status_text(status: object) -> str:
    if not isinstance(status, int):
        return ""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _content(
    record: Mapping[str, Any], side: str, headers: list[tuple[str, str]]
) -> dict[str, Any]:
    fmt = record.get(f"{side}_body_format")
    value = record.get(f"{side}_body")
    mime = header(headers, "content-type") or ""
    size = _size(record.get(f"{side}_body_size"))
    content: dict[str, Any] = {"size": max(size, 0), "mimeType": mime}
    if fmt is None or value is None:
        return content
    if fmt == "json":
        content["text"] = orjson.dumps(value).decode()
        content["mimeType"] = mime or "application/json"
    elif fmt == "base64":
        content["text"] = str(value)
        content["encoding"] = "base64"
    else:
        content["text"] = str(value)
        if fmt == "sse" and not mime:
            content["mimeType"] = "text/event-stream"
    if record.get(f"{side}_body_truncated"):
        content["comment"] = "truncated by llmreel"
    return content
