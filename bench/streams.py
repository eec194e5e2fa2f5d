"""Streaming (SSE) timing on the client side: time to first chunk and gaps between chunks.

A tiny HTTP/1.1 client over asyncio streams, so the client adds as little as possible: it writes
one request and timestamps each SSE event (an `\\n\\n`-terminated block) when its last byte
arrives. Works with chunked and content-length bodies, over one keep-alive connection.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import payloads
from .procs import HOST


@dataclass(frozen=True)
class Stream:
    status: int
    cache: str | None
    """The llmreel-cache response header, if any."""
    sent_at: float
    first_at: float
    """When the first SSE event was complete."""
    event_times: list[float]
    ended_at: float

    @property
    def ttfc_ms(self) -> float:
        return (self.first_at - self.sent_at) * 1000

    @property
    def gaps_ms(self) -> list[float]:
        t = self.event_times
        return [(b - a) * 1000 for a, b in itertools.pairwise(t)]


class _Events:
    """Counts complete SSE events in a byte stream and timestamps them."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.times: list[float] = []

    def feed(self, data: bytes, now: float) -> None:
        self.buffer += data
        while (cut := self.buffer.find(b"\n\n")) != -1:
            if self.buffer[:cut].strip():
                self.times.append(now)
            del self.buffer[: cut + 2]


class Client:
    """One keep-alive connection to a port, doing one streamed request at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
            self._writer = self._reader = None

    async def stream(self, prompt: str, delay_ms: int, timeout: float = 30.0) -> Stream:
        return await asyncio.wait_for(self._stream(prompt, delay_ms), timeout)

    async def _stream(self, prompt: str, delay_ms: int) -> Stream:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(HOST, self.port)
        reader, writer = self._reader, self._writer
        assert reader is not None and writer is not None
        body = payloads.body(prompt, stream=True)
        head = (
            f"POST {payloads.PATH} HTTP/1.1\r\nhost: {HOST}:{self.port}\r\n"
            "content-type: application/json\r\naccept: text/event-stream\r\n"
            f"authorization: Bearer sk-bench\r\nx-fake-delay-ms: {delay_ms}\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        )
        clock = time.perf_counter
        sent_at = clock()
        writer.write(head.encode() + body)
        await writer.drain()
        status_line, *lines = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
        status = int(status_line.split()[1])
        headers = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        events = _Events()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            await _read_chunked(reader, events.feed, clock)
        else:
            remaining = int(headers.get("content-length", "0"))
            while remaining > 0:
                data = await reader.read(min(remaining, 65536))
                if not data:
                    raise ConnectionError("connection closed mid-body")
                events.feed(data, clock())
                remaining -= len(data)
        ended_at = clock()
        if headers.get("connection", "").lower() == "close":
            await self.close()
        if not events.times:
            raise RuntimeError(f"no SSE event in the response (status {status})")
        return Stream(status, headers.get("llmreel-cache"), sent_at, events.times[0],
                      events.times, ended_at)  # fmt: skip


async def _read_chunked(
    reader: asyncio.StreamReader,
    feed: Callable[[bytes, float], None],
    clock: Callable[[], float],
) -> None:
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers
            return
        data = await reader.readexactly(size + 2)
        feed(data[:-2], clock())


def prompts(count: int) -> list[str]:
    """Unique stream prompts (so llmreel records every one), about 14 SSE events each."""
    nonce = secrets.token_hex(4)
    return [
        f"Stream {nonce} {i}: say hello to the benchmark in a few short words" for i in range(count)
    ]


async def sequential(port: int, prompts: list[str], delay_ms: int) -> list[Stream]:
    """Stream each prompt in turn over one keep-alive connection."""
    client = Client(port)
    try:
        return [await client.stream(p, delay_ms) for p in prompts]
    finally:
        await client.close()


async def concurrent(
    port: int, prompts: list[str], delay_ms: int, on_tick: Callable[[], None], tick_s: float = 0.02
) -> list[Stream]:
    """Stream every prompt at once, one connection each; call on_tick() while they run."""

    async def one(prompt: str) -> Stream:
        client = Client(port)
        try:
            return await client.stream(prompt, delay_ms, timeout=60.0)
        finally:
            await client.close()

    tasks = [asyncio.create_task(one(p)) for p in prompts]
    pending = set(tasks)
    while pending:
        on_tick()
        _, pending = await asyncio.wait(pending, timeout=tick_s)
    on_tick()
    return [t.result() for t in tasks]


def max_in_flight(streams: list[Stream]) -> int:
    """The largest number of streams that were between first event and end at one moment."""
    edges = sorted([(s.first_at, 1) for s in streams] + [(s.ended_at, -1) for s in streams])
    best = current = 0
    for _, step in edges:
        current += step
        best = max(best, current)
    return best
