"""The export format: byte-exact round trips, readable bodies, determinism, file names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmreel.storage.export import (
    EXPORT_VERSION,
    MARKER_FILE,
    ExportError,
    dumps,
    entry_path,
    escape_name,
    from_export,
    loads,
    parse_entry_path,
    to_export,
    unescape_name,
)
from llmreel.storage.records import Recording, pack, unpack

FIXTURES = Path(__file__).parent / "fixtures"
BODIES = sorted(p for p in FIXTURES.iterdir() if p.suffix in (".json", ".sse"))
SSE = "text/event-stream; charset=utf-8"


def make(body: bytes, content_type: str = "application/json", **kw: Any) -> Recording:
    fields: dict[str, Any] = {
        "key": "0123456789abcdef0123456789abcdef",
        "namespace": "default",
        "request": {
            "method": "POST",
            "scheme": "https",
            "host": "api.openai.com",
            "port": 443,
            "path": "/v1/chat/completions",
            "query": [],
            "headers": {},
            "body": {"model": "gpt-4o-mini", "temperature": 0.1 + 0.2, "messages": []},
        },
        "status": 200,
        "headers": [("content-type", content_type), ("x-request-id", "req_1")],
        "body": body,
        "recorded_at": 1767225600.123456,
        "provider": "openai",
        "model": "gpt-4o-mini",
        "usage": {"input": 3, "output": 5, "cache_read": 0, "cache_write": 0, "reasoning": 0},
        "duration_s": 0.812345,
        "ttfc_s": 0.2,
    }
    fields.update(kw)
    return Recording(**fields)


def round_trip(rec: Recording) -> tuple[bytes, Recording]:
    data = dumps(to_export(rec))
    back = from_export(loads(data))
    assert dumps(to_export(back)) == data, "export -> import -> export is not byte-identical"
    return data, back


def event_chunks(body: bytes, t0: float = 0.05, step: float = 0.0125) -> list[tuple[float, int]]:
    sep = b"\r\n\r\n" if b"\r\n\r\n" in body else b"\n\n"
    parts = body.split(sep)
    sizes = [len(p) + len(sep) for p in parts[:-1]] + ([len(parts[-1])] if parts[-1] else [])
    return [(round(t0 + i * step, 6), n) for i, n in enumerate(sizes)]


def fixed_chunks(body: bytes, size: int) -> list[tuple[float, int]]:
    return [
        (round(0.1 + i / 1000, 6), len(body[o : o + size]))
        for i, o in enumerate(range(0, len(body), size))
    ]


CASES = [
    (path, chunking)
    for path in BODIES
    for chunking in (
        ["none", "per-event", "coalesced", "split"] if "stream" in path.name else ["none"]
    )
]


@pytest.mark.parametrize(("path", "chunking"), CASES, ids=lambda c: getattr(c, "name", c))
def test_every_fixture_body_round_trips_byte_for_byte(path: Path, chunking: str) -> None:
    body = path.read_bytes()
    stream = "stream" in path.name
    chunks = {
        "none": [],
        "per-event": event_chunks(body) if stream else [],
        "coalesced": [(0.3, len(body))],
        "split": fixed_chunks(body, 97),
    }[chunking]
    rec = make(body, SSE if path.suffix == ".sse" else "application/json", chunks=chunks)
    _data, back = round_trip(rec)
    assert back == rec
    assert back.body == body
    # And the LMDB encoding of the re-imported recording decodes to the same thing.
    assert unpack(pack(back)) == rec


@pytest.mark.parametrize("path", BODIES, ids=lambda p: p.name)
def test_bodies_are_decoded_not_escaped(path: Path) -> None:
    body = path.read_bytes()
    sse = path.suffix == ".sse"
    doc = to_export(
        make(body, SSE if sse else "application/json", chunks=event_chunks(body) if sse else [])
    )
    desc = doc["response"]["body"]
    if path.name == "gemini-stream-jsonarray.json":
        assert "lines" in desc  # a JSON array streamed with CRLF between items: kept as text
    elif sse:
        events = desc["sse"]["events"]
        assert not any("raw" in e for e in events), "every real event decodes"
        assert all("t" in e for e in events)
        assert "chunks" not in doc["response"], "one chunk per event needs no chunk list"
    else:
        assert isinstance(desc["json"], dict)


def test_anthropic_padding_gemini_crlf_and_openai_obfuscation_are_kept() -> None:
    anthropic = (FIXTURES / "anthropic-messages-stream.sse").read_bytes()
    doc = to_export(make(anthropic, SSE, chunks=event_chunks(anthropic)))
    events = doc["response"]["body"]["sse"]["events"]
    assert any(e.get("pad") for e in events)
    assert events[0]["event"] == "message_start" and events[0]["data"]["type"] == "message_start"
    ping = next(e for e in events if e.get("event") == "ping")
    assert ping["style"] in ("colon-space", "spaced")  # {"type": "ping"}, unlike its neighbours

    gemini = (FIXTURES / "gemini-stream.sse").read_bytes()
    sse = to_export(make(gemini, "text/event-stream"))["response"]["body"]["sse"]
    assert sse["eol"] == "\r\n" and sse["style"] == "colon-space"

    openai = (FIXTURES / "openai-chat-stream.sse").read_bytes()
    sse = to_export(make(openai, SSE))["response"]["body"]["sse"]
    assert all("obfuscation" in e["data"] for e in sse["events"][:-1])
    assert sse["events"][-1] == {"text": "[DONE]"}


def test_event_times_come_from_the_chunk_that_completed_each_event() -> None:
    body = b"data: 1\n\ndata: 2\n\ndata: 3\n\n"
    # Event 1 arrives whole; event 2 is split over two reads; event 3 shares the last read.
    chunks = [(0.1, 9), (0.2, 4), (0.35, 5 + 9)]
    doc = to_export(make(body, SSE, chunks=chunks))
    times = [e["t"] for e in doc["response"]["body"]["sse"]["events"]]
    assert times == [0.1, 0.35, 0.35]
    assert doc["response"]["chunks"] == [[0.1, 9], [0.2, 4], [0.35, 14]]
    assert round_trip(make(body, SSE, chunks=chunks))[1].chunks == chunks


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"plain text\nwith lines\r\nand CRLF\n",
        b'{"a": 1.50}',  # a float spelled unlike repr()
        b'{"a":1E5,"b":-0}',
        b'{"big":123456789012345678901234567890}',
        b'{"esc":"\\u00e9\\/"}',
        b'{"lone":"\\ud83d"}',
        b'{"k":1,"k":2}',  # duplicate keys
        b'{"x":NaN}',
        b' {"lead":"space"}',
        '{"unicode":"héllo ✓"}\n'.encode(),
        b'{"unicode":"h\\u00e9llo"}',
        bytes(range(256)),
        b"\xff\xfe not utf-8",
        b"[1,2,3]",
        b"42",
    ],
)
def test_odd_json_and_binary_bodies_fall_back_losslessly(body: bytes) -> None:
    rec = make(body)
    assert round_trip(rec)[1] == rec


@pytest.mark.parametrize(
    "body",
    [
        b': keep-alive comment\n\ndata: {"a":1}\n\n',
        b"event: x\ndata: line 1\ndata: line 2\n\n",  # several data lines
        b"id: 7\ndata: {}\n\n",
        b'data: {"a":1}\n\ndata: {"cut":',  # the last event was cut
        b"data: {}\r\rdata: {}\r\r",  # CR line endings
        b"data: {}\n\ndata: {}\r\n\r\n",  # mixed
        b"data:{}\n\n",  # no space after the colon
        b"data: {}\n\n\n",  # an extra blank line
        b"no line breaks at all",
        'data: {"t":"é"}\n\n'.encode(),
    ],
)
def test_unusual_sse_round_trips(body: bytes) -> None:
    rec = make(body, SSE, chunks=fixed_chunks(body, 5))
    assert round_trip(rec)[1] == rec
    assert round_trip(make(body, SSE))[1].body == body


@settings(max_examples=300, deadline=None)
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300).map(lambda s: s.encode("utf-8", "surrogatepass")),
        st.lists(
            st.tuples(
                st.sampled_from(["", "event: e\n"]), st.text(alphabet='{}[]":,a1 \r\n', max_size=12)
            ),
            max_size=6,
        ).map(lambda evs: "".join(f"{e}data: {d}\n\n" for e, d in evs).encode()),
    ),
    content_type=st.sampled_from(["application/json", SSE, "text/plain"]),
    cut=st.integers(1, 50),
)
def test_any_body_round_trips(body: bytes, content_type: str, cut: int) -> None:
    chunks = fixed_chunks(body, cut) if body else []
    rec = make(body, content_type, chunks=chunks)
    assert round_trip(rec)[1] == rec


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_floats_round_trip_exactly(value: float) -> None:
    rec = make(
        json.dumps({"v": value}).encode(),
        recorded_at=abs(value),
        request={"method": "POST", "body": {"temperature": value}},
        chunks=[],
    )
    back = round_trip(rec)[1]
    assert back.recorded_at == abs(value) and back.request["body"]["temperature"] == value
    assert back.body == rec.body


def test_dumps_is_deterministic_sorted_and_keeps_payload_order() -> None:
    body = b'{"z":1,"a":{"y":2,"b":3}}'
    rec = make(body, request={"method": "POST", "body": {"z": 1, "a": 2}})
    first, second = dumps(to_export(rec)), dumps(to_export(rec))
    assert first == second and first.endswith(b"}\n")
    text = first.decode()
    assert text.index('"key"') < text.index('"llmreel_export"') < text.index('"meta"')
    assert text.index('"a": 2') < text.index('"z": 1')  # the request is sorted
    assert text.index('"z": 1,\n') < text.index('"a": {')  # the response payload is not
    assert '\n  "key"' in text  # two-space indent


def test_a_hand_edited_body_is_reserialized_in_the_recorded_style() -> None:
    body = (FIXTURES / "openai-chat.json").read_bytes()
    doc = loads(dumps(to_export(make(body))))
    doc["response"]["body"]["json"]["choices"][0]["message"]["content"] = "Edited."
    edited = from_export(doc).body
    assert b'"content": "Edited."' in edited and edited.endswith(b"}\n")
    assert json.loads(edited)["usage"] == json.loads(body)["usage"]


def test_metadata_is_readable() -> None:
    doc = to_export(make(b"{}", namespace="tests/test_a.py::test_b", seq=2))
    assert doc["llmreel_export"] == EXPORT_VERSION
    assert doc["meta"]["namespace"] == "tests/test_a.py::test_b"
    assert doc["meta"]["provider"] == "openai" and doc["meta"]["usage"]["output"] == 5
    assert doc["response"]["headers"][0] == ["content-type", "application/json"]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"llmreel_export": 99}, "version 99"),
        ({}, "not an llmreel export"),
        ({"llmreel_export": 1, "key": "k"}, "malformed"),
    ],
)
def test_bad_documents_say_what_is_wrong(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ExportError, match=message):
        from_export(doc)


def test_unknown_body_style_is_an_error() -> None:
    doc = to_export(make(b'{"a":1}'))
    doc["response"]["body"]["style"] = "fancy"
    with pytest.raises(ExportError, match="unknown JSON style"):
        from_export(doc)


# --- file names -------------------------------------------------------------------------------


def test_entry_paths() -> None:
    key = "0123456789abcdef0123456789abcdef"
    assert entry_path("default", key) == f"default/{key}.json"
    assert entry_path("default", key, 3) == f"default/{key}.3.json"
    assert entry_path("tests/test_x.py::t[1]", key).startswith("tests%2Ftest_x.py%3A%3At%5B1%5D/")
    assert parse_entry_path("default", f"{key}.3.json") == parse_entry_path(
        "default", f"{key}.3.json"
    )
    parsed = parse_entry_path("tests%2Fa", f"{key}.3.json")
    assert parsed is not None and (parsed.namespace, parsed.key, parsed.seq) == ("tests/a", key, 3)
    for not_entry in ("README.md", ".x.json.123.tmp", "a.0.json", "a.b.c.json"):
        assert parse_entry_path("default", not_entry) is None


@pytest.mark.parametrize(
    "name",
    ["default", ".hidden", "..", ".", "a/b", "ü ñ 🎉", MARKER_FILE, "x%41", "~tilde", "a.b"],
)
def test_escaped_names_are_safe_and_reversible(name: str) -> None:
    escaped = escape_name(name)
    assert "/" not in escaped and not escaped.startswith(".") and escaped != MARKER_FILE
    assert unescape_name(escaped) == name


@given(st.text(min_size=1, max_size=60))
def test_escaping_round_trips_any_text(name: str) -> None:
    escaped = escape_name(name)
    assert all(c.isascii() and (c.isalnum() or c in "%-_.~") for c in escaped)
    assert len(escaped) <= 200
    if "~" not in escaped:
        assert unescape_name(escaped) == name


def test_long_names_are_shortened_with_a_hash() -> None:
    long_a, long_b = "n" * 300 + "a", "n" * 300 + "b"
    a, b = escape_name(long_a), escape_name(long_b)
    assert len(a) <= 200 and a != b and "~" in a
    assert unescape_name(a) is None  # readers take the namespace from the file instead
    assert len(escape_name("/" * 150)) <= 200
