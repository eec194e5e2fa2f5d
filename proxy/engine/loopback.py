"""The little HTTP/1.1 that llmreel's own loopback servers speak (the pacer, the control API).

Their only clients are mitmproxy and local test runners, so a request is a head and a body of
`content-length` bytes; anything else is refused by closing the connection.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from http import HTTPStatus


class TooLarge(ValueError):
    """The request announced a body over the server's limit."""


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    headers: dict[str, str]
    """Lower-case names."""
    body: bytes


async def read_request(reader: asyncio.StreamReader, max_body: int) -> Request:
    """One request; raises `asyncio.IncompleteReadError` at EOF, `TooLarge`, or `ValueError`."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    if length > max_body:
        raise TooLarge(f"request body of {length} bytes; at most {max_body}")
    body = await reader.readexactly(length) if length else b""
    return Request(method.upper(), target, headers, body)


def status_line(status: int) -> str:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Status"
    return f"HTTP/1.1 {status} {phrase}"
