"""SSE parser: the spec's edge cases, the recorded fixtures, and chunking invariance."""

from __future__ import annotations

import itertools
import random
import re
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmreel.providers.sse import SSEEvent, SSEParser, looks_like_sse, parse_sse

FIXTURES = Path(__file__).parent / "fixtures"
SSE_FIXTURES = sorted(FIXTURES.glob("*.sse"))
ALL_FIXTURES = sorted(p for p in FIXTURES.iterdir() if p.suffix in (".sse", ".json"))


def feed_chunks(chunks: list[bytes]) -> tuple[list[SSEEvent], bool]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    events.extend(parser.close())
    return events, parser.truncated


def split_at(body: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(body)]
    return [body[a:b] for a, b in itertools.pairwise(points)]


def reference_parse(body: bytes) -> list[SSEEvent]:
    """A deliberately naive whole-body reading of the spec, to check the incremental parser."""
    text = body.decode("utf-8", errors="replace")
    text = text.removeprefix("\ufeff")
    lines = re.split(r"\r\n|\r|\n", text)[:-1]  # the last piece is unterminated: discarded
    events: list[SSEEvent] = []
    data: list[str] = []
    event, retry, last_id = "", None, None
    for line in lines:
        if line == "":
            if data:
                events.append(SSEEvent("\n".join(data), event or "message", last_id, retry))
            data, event, retry = [], "", None
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "retry" and re.fullmatch(r"[0-9]+", value):
            retry = int(value)
    return events


# --- the recorded fixtures -----------------------------------------------------------------------


# One event per `data:` line in these files (`grep -c '^data'`).
EXPECTED_COUNTS = {
    "anthropic-cache-stream.sse": 46,
    "anthropic-compaction-cache-stream.sse": 12,
    "anthropic-messages-stream.sse": 10,
    "anthropic-stream-error-event.sse": 1,
    "anthropic-tools-stream.sse": 35,
    "gemini-stream.sse": 3,
    "openai-chat-stream.sse": 12,
    "openai-chat-tools-stream.sse": 9,
    "openai-responses-stream-alt-keyorder.sse": 16,
    "openai-responses-stream.sse": 16,
    "openai-responses-tools-stream.sse": 11,
}


def test_every_sse_fixture_has_an_expected_count() -> None:
    assert {p.name for p in SSE_FIXTURES} == set(EXPECTED_COUNTS)


@pytest.mark.parametrize("path", SSE_FIXTURES, ids=lambda p: p.name)
def test_fixture_parses_completely(path: Path) -> None:
    parser = SSEParser()
    events = parser.feed(path.read_bytes()) + parser.close()
    assert len(events) == EXPECTED_COUNTS[path.name]
    assert not parser.truncated
    assert events == reference_parse(path.read_bytes())


@pytest.mark.parametrize("path", ALL_FIXTURES, ids=lambda p: p.name)
def test_fixture_byte_by_byte_and_random_splits(path: Path) -> None:
    body = path.read_bytes()
    whole = feed_chunks([body])
    assert feed_chunks([body[i : i + 1] for i in range(len(body))]) == whole
    rng = random.Random(path.name)
    for _ in range(20):
        cuts = [rng.randrange(len(body) + 1) for _ in range(rng.randrange(1, 40))]
        assert feed_chunks(split_at(body, cuts)) == whole


def test_gemini_crlf_framing() -> None:
    events = parse_sse((FIXTURES / "gemini-stream.sse").read_bytes())
    assert [e.event for e in events] == ["message"] * 3
    assert all(e.data.startswith('{"candidates": ') and e.data.endswith("}") for e in events)
    assert not any("\r" in e.data for e in events)


def test_named_events_and_padding_are_kept() -> None:
    events = parse_sse((FIXTURES / "anthropic-messages-stream.sse").read_bytes())
    assert [e.event for e in events][:3] == ["message_start", "content_block_start", "ping"]
    assert events[2].data == '{"type": "ping"}'
    assert events[-1] == SSEEvent('{"type":"message_stop" }', "message_stop")


def test_openai_done_terminator() -> None:
    events = parse_sse((FIXTURES / "openai-chat-stream.sse").read_bytes())
    assert events[-1] == SSEEvent("[DONE]")


# --- line endings ------------------------------------------------------------------------------


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_line_endings(eol: bytes) -> None:
    body = eol.join([b"event: a", b"data: 1", b"data: 2", b"", b"data: 3", b"", b""])
    assert parse_sse(body) == [SSEEvent("1\n2", "a"), SSEEvent("3")]


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    # If the LF after a chunk-final CR counted as an empty line, "a" and "b" would be two events.
    events, truncated = feed_chunks([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"])
    assert events == [SSEEvent("a\nb")]
    assert not truncated


def test_cr_then_cr_is_a_blank_line() -> None:
    assert feed_chunks([b"data: a\r", b"\r"]) == ([SSEEvent("a")], False)


def test_mixed_line_endings() -> None:
    assert parse_sse(b"data: a\rdata: b\ndata: c\r\n\n") == [SSEEvent("a\nb\nc")]


def test_other_unicode_line_breaks_are_data() -> None:
    # str.splitlines() would split on these; the SSE spec does not.
    payload = "x\u2028y\x85z\x0bw\x1cv"
    assert parse_sse(f"data: {payload}\n\n".encode()) == [SSEEvent(payload)]


# --- fields --------------------------------------------------------------------------------------


def test_leading_bom_is_stripped_once() -> None:
    assert parse_sse(b"\xef\xbb\xbfdata: a\n\n") == [SSEEvent("a")]
    # Only at the very start: a second BOM makes the field name "\ufeffdata", which is ignored.
    assert parse_sse(b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n") == []


def test_bom_split_across_chunks() -> None:
    assert feed_chunks([b"\xef", b"\xbb", b"\xbfdata: a\n\n"]) == ([SSEEvent("a")], False)


def test_comments_are_ignored() -> None:
    assert parse_sse(b": keep-alive\n:\ndata: a\n: inside\n\n") == [SSEEvent("a")]


def test_space_after_colon() -> None:
    assert parse_sse(b"data:a\n\n") == [SSEEvent("a")]
    assert parse_sse(b"data:  two\n\n") == [SSEEvent(" two")]
    assert parse_sse(b"data: \n\n") == [SSEEvent("")]


def test_field_without_colon() -> None:
    # "data" alone is a data line with an empty value; the event is dispatched with data "".
    assert parse_sse(b"data\n\n") == [SSEEvent("")]
    assert parse_sse(b"data\ndata\n\n") == [SSEEvent("\n")]
    assert parse_sse(b"event\ndata: x\n\n") == [SSEEvent("x", "message")]


def test_unknown_fields_are_ignored() -> None:
    assert parse_sse(b"foo: bar\ndata: x\nDATA: y\n\n") == [SSEEvent("x")]


def test_blank_line_without_data_resets_event_type() -> None:
    assert parse_sse(b"event: ping\n\ndata: x\n\n") == [SSEEvent("x", "message")]


def test_event_type_does_not_leak_to_next_event() -> None:
    assert parse_sse(b"event: a\ndata: 1\n\ndata: 2\n\n") == [SSEEvent("1", "a"), SSEEvent("2")]


def test_id_persists_and_nul_is_ignored() -> None:
    body = b"id: 7\ndata: a\n\ndata: b\n\nid: 8\x00\ndata: c\n\nid\ndata: d\n\n"
    assert [e.id for e in parse_sse(body)] == ["7", "7", "7", ""]


def test_retry_only_when_all_ascii_digits() -> None:
    body = "retry: 1500\ndata: a\n\nretry: 15x\ndata: b\n\nretry: ²\ndata: c\n\nretry:\ndata: d\n\n"
    assert [e.retry for e in parse_sse(body.encode())] == [1500, None, None, None]


def test_invalid_utf8_is_replaced() -> None:
    assert parse_sse(b"data: a\xffb\n\n") == [SSEEvent("a\ufffdb")]


def test_utf8_sequence_split_across_chunks() -> None:
    emoji = "👋".encode()
    chunks = [b"data: " + emoji[:1], emoji[1:3], emoji[3:] + b"\n\n"]
    assert feed_chunks(chunks) == ([SSEEvent("👋")], False)


def test_incomplete_utf8_at_end_of_stream() -> None:
    assert feed_chunks([b"data: \xe2\x82\n\n:c\xe2"]) == ([SSEEvent("\ufffd")], False)


# --- end of stream -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "truncated"),
    [
        (b"", False),
        (b"data: a\n\n", False),
        (b"data: a\r\n\r\n", False),
        (b"data: a\n\n: trailing comment", False),
        (b"data: a\n\nevent: x\n", False),  # no data: nothing would have been dispatched
        (b"data: a", True),  # unterminated last line
        (b"data: a\n", True),  # data without the blank line
        (b"data: a\r", True),
        (b"data: a\n\nda", True),
    ],
)
def test_truncation(body: bytes, truncated: bool) -> None:
    parser = SSEParser()
    events = parser.feed(body)
    assert not parser.truncated  # only known at close()
    events += parser.close()
    assert parser.truncated is truncated
    complete = body.startswith((b"data: a\n\n", b"data: a\r\n\r\n"))
    assert events == ([SSEEvent("a")] if complete else [])


def test_close_is_idempotent() -> None:
    parser = SSEParser()
    parser.feed(b"data: a\n")
    assert parser.close() == []
    assert parser.close() == []
    assert parser.truncated


def test_one_huge_line_in_small_chunks_is_linear() -> None:
    # A base64 image in one data line, delivered 1 KiB at a time. Re-copying the pending line
    # per chunk would make 8x the line cost 64x the time; linear, it costs about 8x (up to 14x
    # measured, as the larger line outgrows the CPU caches). A ratio of two sizes, so a busy
    # machine slows both alike.
    def feed_time(size: int) -> float:
        body = b"data: " + b"A" * size + b"\n\n"
        times = []
        for _ in range(3):
            parser = SSEParser()
            start = time.perf_counter()
            events = [e for i in range(0, len(body), 1024) for e in parser.feed(body[i : i + 1024])]
            times.append(time.perf_counter() - start)
            assert len(events) == 1 and len(events[0].data) == size
        return min(times)

    ratio = feed_time(4_000_000) / feed_time(500_000)
    assert ratio < 32, f"8x the line took {ratio:.1f}x as long (linear: about 8x)"


def test_feed_returns_events_as_soon_as_complete() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\n") == []
    assert parser.feed(b"\n") == [SSEEvent("a")]
    assert parser.feed(b"data: b\n\ndata: c\n\n") == [SSEEvent("b"), SSEEvent("c")]


# --- properties ----------------------------------------------------------------------------------

# Mostly SSE-shaped pieces, so that the interesting states (split CRLF, BOM, multi-byte UTF-8,
# fields, comments) are reached often; raw binary covers everything else.
_PIECES = st.sampled_from(
    [
        b"data",
        b"data:",
        b"data: ",
        b"event: e",
        b"id: 1",
        b"id",
        b"retry: 12",
        b"retry: x",
        b":c",
        b":",
        b"x",
        b" ",
        b"\r",
        b"\n",
        b"\r\n",
        b"\n\n",
        b"\r\r",
        b"\xef\xbb\xbf",
        b"\xc3",
        b"\xa9",
        b"\xf0\x9f\x91\x8b",
        b"\xff",
        b"\x00",
        "\u2028".encode(),
    ]
)
_BODIES = st.one_of(st.lists(_PIECES, max_size=60).map(b"".join), st.binary(max_size=300))


@settings(max_examples=400, deadline=None)
@given(body=_BODIES, data=st.data())
def test_any_chunking_gives_the_same_events(body: bytes, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=12))
    assert feed_chunks(split_at(body, cuts)) == feed_chunks([body])


@settings(max_examples=400, deadline=None)
@given(body=_BODIES)
def test_matches_the_naive_reference(body: bytes) -> None:
    assert parse_sse(body) == reference_parse(body)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"data: {}\n\n", True),
        (b"\xef\xbb\xbf\r\nevent: ping\r\n", True),
        (b": keep-alive\n", True),
        (b"<html>502 Bad Gateway</html>", False),
        (b'{"error": {}}', False),
        (b"database is down", False),
    ],
)
def test_looks_like_sse_sniffs_streams_sent_without_their_content_type(body: bytes, expected: bool) -> None:
    assert looks_like_sse(body) is expected
