"""The JSONL sink: one JSON log record per exchange, one per line, to a file or standard output."""

from __future__ import annotations

import logging
import os
import sys
from typing import IO, TYPE_CHECKING

import orjson

from llmreel.log.record import exchange_record
from llmreel.log.throttle import ThrottledLog

if TYPE_CHECKING:
    from llmreel.core.exchange import Exchange

__all__ = ["JsonlSink"]

log = logging.getLogger(__name__)


class JsonlSink:
    """Writes one JSON object per exchange, one per line, to a file or (`-`) standard output.

    For shipping to Loki, Elasticsearch and the like: the fields are those of
    `exchange_record`, bodies only with `bodies=True`. The file is opened for appending and
    created with mode 0600 (it may hold prompts); each line goes out in one unbuffered write,
    so a crash never leaves half a line and several proxies can share one file.
    `append` is one of `Recorder.sinks`: it runs on the proxy's event loop.
    """

    def __init__(self, path: str, *, bodies: bool = False, stdout: IO[bytes] | None = None) -> None:
        self.path = path
        self.bodies = bodies
        self._owned = path != "-"
        if self._owned:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            except OSError as exc:
                raise OSError(
                    f"cannot open the log file {path}: {exc.strerror}. "
                    "Pass another --log-file, or - for standard output."
                ) from exc
            self._out: IO[bytes] = open(fd, "ab", buffering=0)  # closed in close()
        else:
            self._out = stdout if stdout is not None else sys.stdout.buffer
        self._errors = ThrottledLog(log)

    def append(self, ex: Exchange) -> None:
        """Write the line for `ex`. Never raises: a full disk costs log lines, not requests."""
        try:
            record = exchange_record(ex, bodies=self.bodies)
            line = orjson.dumps(record, default=str) + b"\n"
            self._out.write(line)
            if not self._owned:
                self._out.flush()
        except Exception as exc:  # noqa: BLE001 - a bug here must cost a log line, not a request
            self._errors.error("cannot write the exchange log to %s: %s", self.path, exc)

    def close(self) -> None:
        if self._owned:
            self._out.close()
