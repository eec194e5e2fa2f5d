"""Incremental Server-Sent Events parser (WHATWG HTML "event stream" interpretation).

Feed it bytes as they arrive, with any chunk boundaries; it yields the same events as parsing whole.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

__all__ = ["SSEEvent", "SSEParser", "parse_sse"]


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event.

    `id` is the stream's *last event ID* at dispatch time (the spec's semantics: an `id:` field
    persists across later events until replaced); None when no `id:` field has been seen yet.
    `retry` is the `retry:` value given inside this event's own block, if any.
    """

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEParser:
    """Push parser: `feed()` bytes as they arrive, then `close()` at end of stream.

    Not thread-safe; use one parser per stream. Never raises on malformed input: undecodable
    bytes become U+FFFD, unknown fields are ignored, as the spec requires.
    """

    __slots__ = (
        "_closed",
        "_data",
        "_decoder",
        "_event",
        "_last_id",
        "_pending",
        "_retry",
        "_skip_lf",
        "_truncated",
    )

    def __init__(self) -> None:
        # utf-8-sig drops one leading BOM, even when it is split across chunks, and only at the
        # start of the stream, which is exactly the spec's rule.
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
        # Pieces of the current, not yet terminated line. A list, so that one huge line (a
        # base64 image) arriving in many chunks is joined once, not re-copied per chunk.
        self._pending: list[str] = []
        self._skip_lf = False  # previous text ended in CR: a leading LF completes that CRLF
        self._data: list[str] = []
        self._event = ""
        self._retry: int | None = None
        self._last_id: str | None = None
        self._truncated = False
        self._closed = False

    @property
    def truncated(self) -> bool:
        """After `close()`: True if the stream ended inside an event (its blank line never came)."""
        return self._truncated

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume `chunk` and return the events it completed, in order."""
        return self._consume(self._decoder.decode(chunk))

    def close(self) -> list[SSEEvent]:
        """End of stream: flush the decoder and discard any incomplete event (setting `truncated`)."""
        if self._closed:
            return []
        self._closed = True
        # A final incomplete UTF-8 sequence decodes to U+FFFD here.
        events = self._consume(self._decoder.decode(b"", final=True))
        line = "".join(self._pending)
        self._pending = []
        # The spec discards an unterminated last line and any undispatched event. We report that
        # it happened: a dropped `data:` means the upstream connection died mid-event.
        self._truncated = bool(self._data) or (line != "" and not line.startswith(":"))
        self._data = []
        return events

    def _consume(self, text: str) -> list[SSEEvent]:
        if not text:
            return []
        if self._skip_lf:
            # The previous chunk ended in CR, which already terminated its line: an LF right
            # after it is the second half of a CRLF, not an empty line.
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
                if not text:
                    return []
        self._skip_lf = text[-1] == "\r"
        if "\r" in text:
            # Normalising to LF is safe chunk by chunk: a CR ending the previous chunk was
            # already a line end, and the LF that may follow it was dropped above.
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        elif "\n" not in text:
            self._pending.append(text)
            return []
        # Not splitlines(): it also splits on \x0b, \x0c, \x1c-\x1e, \x85, \u2028 and \u2029,
        # which are legal inside a data line. (A regex split would cost ~20 ns per char.)
        lines = text.split("\n")
        if self._pending:
            self._pending.append(lines[0])
            lines[0] = "".join(self._pending)
        rest = lines.pop()
        self._pending = [rest] if rest else []
        events: list[SSEEvent] = []
        for line in lines:
            if line:
                self._field(line)
            elif self._data:
                events.append(self._dispatch())
            else:
                # A blank line with no data dispatches nothing but still resets the event type.
                self._event = ""
                self._retry = None
        return events

    def _field(self, line: str) -> None:
        if line[0] == ":":
            return  # comment, e.g. a keep-alive
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]  # exactly one leading space is part of the syntax
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            # isascii(): isdigit() alone accepts non-ASCII digits such as "²".
            self._retry = int(value)

    def _dispatch(self) -> SSEEvent:
        ev = SSEEvent("\n".join(self._data), self._event or "message", self._last_id, self._retry)
        self._data = []
        self._event = ""
        self._retry = None
        return ev


def parse_sse(body: bytes) -> list[SSEEvent]:
    """Parse a complete event-stream body. An incomplete final event is dropped, as the spec says."""
    parser = SSEParser()
    events = parser.feed(body)
    events.extend(parser.close())
    return events


# An event stream sent without its content type still starts with a field or a comment.
_START = re.compile(rb"(?:\xef\xbb\xbf)?[ \t\r\n]*(?::|data\b|event\b|id\b|retry\b)")


def looks_like_sse(body: bytes) -> bool:
    """Whether `body` starts like an event stream (for bodies sent without their content type)."""
    return _START.match(body[:256]) is not None
