"""A loopback server that replays recorded streams with their recorded timing.

mitmproxy sends a response made in the request hook in one piece, so a paced replay cannot be
made there. Instead the addon points the flow at this server, on 127.0.0.1 in the proxy's own
event loop; mitmproxy then streams its answer to the client chunk by chunk, as it would an
upstream's. Nothing leaves the machine, so offline mode allows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time

from llmreel.core.pacing import schedule
from llmreel.core.wire import CACHE_HEADER, KEY_HEADER
from llmreel.engine.loopback import read_request, status_line
from llmreel.storage.records import Recording

log = logging.getLogger("llmreel")

PATH_PREFIX = "/llmreel-replay/"
#: A replay handed out but never fetched (the client went away) is forgotten after this long.
CLAIM_TTL_S = 60.0
MAX_PENDING = 10_000
#: The replayed request's body (mitmproxy resends the client's) is read and dropped.
_MAX_BODY = 64 << 20


class Pacer:
    """Serves each registered recording once, at `factor` times its recorded pace."""

    def __init__(self, factor: float) -> None:
        self.factor = factor
        self._pending: dict[str, tuple[Recording, str, float]] = {}
        self._server: asyncio.Server | None = None
        self.port = 0

    async def address(self) -> tuple[str, int]:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = int(self._server.sockets[0].getsockname()[1])
        return "127.0.0.1", self.port

    def register(self, rec: Recording, key: str) -> str:
        """The path at which the replay of `rec` waits, once."""
        now = time.monotonic()
        if len(self._pending) >= MAX_PENDING:
            self._pending = {t: p for t, p in self._pending.items() if p[2] > now}
        token = secrets.token_urlsafe(16)
        self._pending[token] = (rec, key, now + CLAIM_TTL_S)
        return PATH_PREFIX + token

    def owns(self, host: str, port: int) -> bool:
        return self._server is not None and port == self.port and host == "127.0.0.1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await read_request(reader, _MAX_BODY)
            claim = self._pending.pop(request.target.removeprefix(PATH_PREFIX), None)
            if claim is None:
                writer.write(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                )
                return
            await self._replay(writer, *claim[:2])
        except (
            asyncio.IncompleteReadError,
            ConnectionError,
            asyncio.LimitOverrunError,
            ValueError,
        ):
            pass  # the client (mitmproxy) went away: nothing to replay to
        finally:
            with contextlib.suppress(ConnectionError):
                writer.close()

    async def _replay(self, writer: asyncio.StreamWriter, rec: Recording, key: str) -> None:
        lines = [status_line(rec.status)]
        lines += [f"{name}: {value}" for name, value in rec.headers]
        lines += [f"{CACHE_HEADER}: hit", f"{KEY_HEADER}: {key}", "transfer-encoding: chunked",
                  "connection: close"]  # fmt: skip
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        loop = asyncio.get_running_loop()
        start = loop.time()
        for when, data in schedule(rec.body, rec.chunks, self.factor):
            delay = start + when - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if data:
                writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
