"""The export format: one readable, reviewable, byte-exact JSON document per recording.

`to_export` turns a `Recording` into a JSON-ready document and `from_export` turns it back;
`dumps` writes a document deterministically; `entry_path`/`parse_entry_path` name the file.

Readable and lossless at once: a body is decoded (JSON, or SSE as a list of events) only when the
decoded form, serialized again with a recorded *style* (indent, separators, ASCII escaping,
trailing newline, padding), gives back exactly the recorded bytes. Anything else falls back to
text lines or base64, so no byte is ever lost, and a hand edit of a decoded body (a changed
answer) is re-serialized in the same style.

Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from llmreel.core.wire import is_event_stream
from llmreel.storage.records import Recording, from_meta, to_meta

__all__ = [
    "EXPORT_VERSION",
    "MARKER_FILE",
    "ExportError",
    "dumps",
    "entry_path",
    "escape_name",
    "from_export",
    "loads",
    "marker",
    "parse_entry_path",
    "to_export",
    "unescape_name",
]

#: Bump when the meaning of a field changes; readers refuse versions they do not know.
EXPORT_VERSION = 1
#: Written at the top of an export directory; its presence makes `--store DIR` an export.
MARKER_FILE = "llmreel-export.json"
#: Metadata written as floats whatever their type in memory.
_FLOAT_META = ("recorded_at", "duration_s", "ttfc_s")


class ExportError(ValueError):
    """A document that is not a valid llmreel export; the message says what is wrong."""


# --------------------------------------------------------------------------------------------
# Documents


def to_export(rec: Recording) -> dict[str, Any]:
    """The export document of a recording. Deterministic: the same recording, the same document.

    Nothing is scrubbed here: changing a byte would break replay fidelity and the round trip.
    The store never holds credentials (keys, headers and logs leave them out); `proxy.audit`
    checks that, and `llmreel cache export` refuses entries that look otherwise.
    """
    # The document spreads the metadata: the key on top, the status, headers and chunks with
    # the response they describe, the rest under "meta".
    meta = to_meta(rec)
    key = meta.pop("key")
    body, derived_chunks = _encode_body(rec.body, rec.content_type(), rec.chunks)
    response: dict[str, Any] = {
        "status": meta.pop("status"),
        "headers": [[name, value] for name, value in meta.pop("headers")],
        "body": body,
    }
    chunks = meta.pop("chunks")
    if chunks and derived_chunks != chunks:
        # The chunking is not one chunk per event (an event split over reads, say): keep it as is.
        response["chunks"] = [[float(t), n] for t, n in chunks]
    for name in _FLOAT_META:
        # An int (0) would print as "0" once and "0.0" after a round trip: always floats.
        meta[name] = None if meta[name] is None else float(meta[name])
    return {
        "llmreel_export": EXPORT_VERSION,
        "key": key,
        "meta": meta,
        "request": rec.request,
        "response": response,
    }


def from_export(doc: dict[str, Any]) -> Recording:
    """The recording an export document describes; raises `ExportError` saying what is wrong."""
    if not isinstance(doc, dict):
        raise ExportError("an export document is a JSON object")
    version = doc.get("llmreel_export")
    if version != EXPORT_VERSION:
        raise ExportError(
            f"export format version {version!r}, but this llmreel reads version {EXPORT_VERSION}"
            if version is not None
            else "not an llmreel export (no llmreel_export version field)"
        )
    try:
        response = doc["response"]
        body, derived_chunks = _decode_body(response["body"])
        chunks = response.get("chunks")
        meta = {
            **_dict(doc["meta"], "meta"),
            "key": doc["key"],
            "status": response["status"],
            "headers": response["headers"],
            "chunks": chunks if chunks is not None else derived_chunks,
        }
        return from_meta(meta, request=_dict(doc["request"], "request"), body=body)
    except ExportError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"malformed export document: {type(exc).__name__} {exc}") from exc


def _dict(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ExportError(f"{where} must be an object")
    return value


def marker() -> dict[str, Any]:
    """The content of `MARKER_FILE`."""
    return {
        "format": "llmreel-export",
        "version": EXPORT_VERSION,
        "about": "Recordings of LLM API calls, one file per entry: <namespace>/<key>.json. "
        "Replay them with `llmreel run --mode offline --store <this directory> -- CMD`.",
    }


# --------------------------------------------------------------------------------------------
# Serialization


def dumps(doc: dict[str, Any]) -> bytes:
    """The file content of a document: 2-space indent, sorted keys, trailing newline.

    Keys are sorted everywhere except inside decoded response payloads, whose member order is
    part of the recorded bytes. Floats are written in their shortest exact form (`repr`), so
    they read back to the same value.
    """
    normal = _normalize(doc)
    try:
        text = json.dumps(normal, indent=2, ensure_ascii=False, allow_nan=False)
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (from a "\\ud83d" escape in a body) has no UTF-8 form: escape all.
        return (json.dumps(normal, indent=2, ensure_ascii=True, allow_nan=False) + "\n").encode()


def loads(data: bytes | str) -> dict[str, Any]:
    """Parse an export file; raises `ExportError`."""
    try:
        doc = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ExportError(f"not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ExportError("an export document is a JSON object")
    return doc


def _normalize(doc: dict[str, Any]) -> dict[str, Any]:
    out = _sorted_shallow(doc)
    if isinstance(out.get("meta"), dict):
        out["meta"] = _sorted_deep(out["meta"])
    if "request" in out:
        # The canonical request's member order means nothing (its digest sorts keys).
        out["request"] = _sorted_deep(out["request"])
    response = out.get("response")
    if isinstance(response, dict):
        response = out["response"] = _sorted_shallow(response)
        body = response.get("body")
        if isinstance(body, dict):
            body = response["body"] = _sorted_shallow(body)
            sse = body.get("sse")
            if isinstance(sse, dict):
                sse = body["sse"] = _sorted_shallow(sse)
                events = sse.get("events")
                if isinstance(events, list):
                    sse["events"] = [
                        _sorted_shallow(e) if isinstance(e, dict) else e for e in events
                    ]
    return out


def _sorted_shallow(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: obj[k] for k in sorted(obj)}


def _sorted_deep(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _sorted_deep(obj[k]) for k in sorted(obj)}
    if isinstance(obj, list):
        return [_sorted_deep(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------
# JSON payloads with their exact layout


@dataclass(frozen=True, slots=True)
class _Style:
    indent: int | None
    item_sep: str
    key_sep: str
    ascii: bool
    newline: bool


# Layouts seen on the wire: OpenAI and Gemini pretty-print (2 spaces, OpenAI's 401 4 spaces),
# Anthropic is compact, Gemini's SSE payloads use ": " but ",", Anthropic's ping ", " and ": ".
_COMPACT_SEPS: dict[str, tuple[str, str]] = {
    "compact": (",", ":"),
    "colon-space": (",", ": "),
    "spaced": (", ", ": "),
}
_STYLE_RE = re.compile(r"(compact|colon-space|spaced|indent([1-8]))((?:\+ascii|\+nl)*)")


def _parse_style(name: str) -> _Style:
    m = _STYLE_RE.fullmatch(name)
    if not m:
        raise ExportError(
            f"unknown JSON style {name!r}: expected compact, colon-space, spaced or indentN, "
            "optionally followed by +ascii and +nl"
        )
    base, indent, mods = m.group(1), m.group(2), m.group(3)
    item_sep, key_sep = _COMPACT_SEPS.get(base, (",", ": "))
    return _Style(
        int(indent) if indent else None, item_sep, key_sep, "+ascii" in mods, "+nl" in mods
    )


def _render(value: Any, style: _Style) -> str:
    text = json.dumps(
        value,
        indent=style.indent,
        separators=(style.item_sep, style.key_sep),
        ensure_ascii=style.ascii,
        allow_nan=False,
    )
    return text + "\n" if style.newline else text


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _candidate_styles(text: str) -> list[str]:
    """Styles worth trying for `text`, cheapest guess first (each try serializes the payload)."""
    newline = "+nl" if text.endswith("\n") else ""
    # A payload without non-ASCII characters may still carry \\uXXXX escapes: try +ascii too.
    asciis = ["", "+ascii"] if text.isascii() else [""]
    if len(text) > 2 and text[0] in "[{" and text[1] == "\n":
        width = len(text) - len(text[2:].lstrip(" ")) - 2
        bases = [f"indent{width}"] if 1 <= width <= 8 else []
    else:
        bases = list(_COMPACT_SEPS)
    return [b + a + newline for b in bases for a in asciis]


def _encode_json(text: str) -> tuple[Any, str, int] | None:
    """(value, style, pad) such that `_decode_json` gives back exactly `text`, or None."""
    if not text or text[0] not in '{["-0123456789tfn':
        return None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        return None
    for name in _candidate_styles(text):
        try:
            rendered = _render(value, _parse_style(name))
        except ValueError:
            continue
        if rendered == text:
            return value, name, 0
        pad = _padding(rendered, text)
        if pad:
            return value, name, pad
    return None


def _padding(rendered: str, text: str) -> int:
    # Anthropic pads most SSE payloads with a random run of spaces before the final "}".
    pad = len(text) - len(rendered)
    if (
        pad > 0
        and rendered[-1:] in ("}", "]")
        and text.endswith(rendered[-1])
        and text.startswith(rendered[:-1])
        and text[len(rendered) - 1 : -1] == " " * pad
    ):
        return pad
    return 0


def _decode_json(value: Any, style: str, pad: int = 0) -> str:
    text = _render(value, _parse_style(style))
    if pad:
        if not text or text[-1] not in "}]":
            raise ExportError("pad applies only to a JSON object or array")
        text = text[:-1] + " " * pad + text[-1]
    return text


# --------------------------------------------------------------------------------------------
# Bodies


def _encode_body(
    body: bytes, content_type: str, chunks: list[tuple[float, int]]
) -> tuple[dict[str, Any], list[tuple[float, int]]]:
    """A body descriptor, and the chunk list `_decode_body` would derive from it."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(body).decode("ascii")}, []
    if is_event_stream(content_type):
        sse, derived = _encode_sse(text, chunks)
        if sse is not None:
            return {"sse": sse}, derived
    encoded = _encode_json(text)
    if encoded is not None:
        value, style, pad = encoded
        return {"json": value, "style": style, **({"pad": pad} if pad else {})}, []
    return {"lines": text.split("\n") if text else []}, []


def _decode_body(desc: Any) -> tuple[bytes, list[tuple[float, int]]]:
    if not isinstance(desc, dict):
        raise ExportError("response.body must be an object")
    if "json" in desc:
        return _decode_json(desc["json"], desc["style"], int(desc.get("pad", 0))).encode(), []
    if "sse" in desc:
        return _decode_sse(desc["sse"])
    if "lines" in desc:
        return "\n".join(desc["lines"]).encode("utf-8"), []
    if "base64" in desc:
        try:
            return base64.b64decode(desc["base64"], validate=True), []
        except binascii.Error as exc:
            raise ExportError(f"response.body.base64 is not base64: {exc}") from exc
    raise ExportError("response.body has none of json, sse, lines, base64")


# --- SSE --------------------------------------------------------------------------------------


def _encode_sse(
    text: str, chunks: list[tuple[float, int]]
) -> tuple[dict[str, Any] | None, list[tuple[float, int]]]:
    """Events, each with its time offset; None if the stream has no line structure at all.

    A block of the common shape (`event: NAME` then one `data: PAYLOAD` line) is decoded; any
    other block (comments, several data lines, mixed line endings, a cut last event) is kept
    verbatim as `raw`, so the whole body is always recoverable.
    """
    eol = _first_eol(text)
    if eol is None:
        return None, []
    separator = eol + eol
    blocks = text.split(separator)
    segments = [b + separator for b in blocks[:-1]]
    if blocks[-1]:
        segments.append(blocks[-1])  # an unterminated last block
    events: list[dict[str, Any]] = []
    styles: Counter[str] = Counter()
    for segment in segments:
        event = _encode_event(segment, eol, separator) if segment.endswith(separator) else None
        if event is None:
            event = {"raw": segment}
        elif "style" in event:
            styles[event["style"]] += 1
        events.append(event)
    # The most common style is stated once for the stream; events name theirs only if different.
    common = min(styles, key=lambda s: (-styles[s], s)) if styles else None
    for event in events:
        if common is not None and event.get("style") == common:
            del event["style"]
    times = _segment_times([len(s.encode("utf-8")) for s in segments], chunks)
    if times is not None:
        for event, t in zip(events, times, strict=True):
            event["t"] = float(t)
    sse: dict[str, Any] = {"eol": eol, "events": events}
    if common is not None:
        sse["style"] = common
    return sse, _chunks_from_events(events, separator, eol, common)


def _first_eol(text: str) -> str | None:
    lf, cr = text.find("\n"), text.find("\r")
    if cr == -1:
        return "\n" if lf != -1 else None
    if lf == -1 or cr < lf:
        return "\r\n" if text[cr + 1 : cr + 2] == "\n" else "\r"
    return "\n"


def _encode_event(segment: str, eol: str, separator: str) -> dict[str, Any] | None:
    lines = segment[: -len(separator)].split(eol)
    if any("\r" in line or "\n" in line for line in lines):
        return None
    event: dict[str, Any] = {}
    if len(lines) == 2 and lines[0].startswith("event: "):
        event["event"] = lines[0][len("event: ") :]
        lines = lines[1:]
    if len(lines) != 1 or not lines[0].startswith("data: "):
        return None
    payload = lines[0][len("data: ") :]
    encoded = _encode_json(payload)
    if encoded is None:
        event["text"] = payload
    else:
        event["data"], event["style"], pad = encoded
        if pad:
            event["pad"] = pad
    return event


def _decode_sse(sse: Any) -> tuple[bytes, list[tuple[float, int]]]:
    if not isinstance(sse, dict) or not isinstance(sse.get("events"), list):
        raise ExportError("response.body.sse must be an object with a list of events")
    eol = sse.get("eol")
    if eol not in ("\n", "\r\n", "\r"):
        raise ExportError("response.body.sse.eol must be one of \\n, \\r\\n, \\r")
    style = sse.get("style")
    parts = [_event_text(e, eol, style) for e in sse["events"]]
    body = "".join(parts).encode("utf-8")
    return body, _chunks_from_events(sse["events"], eol + eol, eol, style)


def _event_text(event: Any, eol: str, common_style: str | None) -> str:
    if not isinstance(event, dict):
        raise ExportError("each SSE event must be an object")
    if "raw" in event:
        return str(event["raw"])
    head = f"event: {event['event']}{eol}" if "event" in event else ""
    if "data" in event:
        style = event.get("style", common_style)
        if style is None:
            raise ExportError("an SSE event with data needs a style (its own or the stream's)")
        payload = _decode_json(event["data"], style, int(event.get("pad", 0)))
    elif "text" in event:
        payload = str(event["text"])
    else:
        raise ExportError("an SSE event needs one of data, text, raw")
    return f"{head}data: {payload}{eol}{eol}"


def _segment_times(sizes: list[int], chunks: list[tuple[float, int]]) -> list[float] | None:
    """For each segment, the offset of the chunk that completed it (when a reader could act)."""
    if not chunks or sum(n for _, n in chunks) != sum(sizes):
        return None
    times: list[float] = []
    ci, chunk_end, pos = -1, 0, 0
    for size in sizes:
        pos += size
        while chunk_end < pos:
            ci += 1
            chunk_end += chunks[ci][1]
        times.append(chunks[ci][0])
    return times


def _chunks_from_events(
    events: list[Any], separator: str, eol: str, style: str | None
) -> list[tuple[float, int]]:
    """The chunk list implied by event times: one chunk per run of events with the same `t`.

    When the recorded chunking is exactly that (the usual case: each read brought whole events),
    the export needs no separate chunk list.
    """
    chunks: list[tuple[float, int]] = []
    for event in events:
        if not isinstance(event, dict) or "t" not in event:
            return []
        size = len(_event_text(event, eol, style).encode("utf-8"))
        t = float(event["t"])
        if chunks and chunks[-1][0] == t:
            chunks[-1] = (t, chunks[-1][1] + size)
        else:
            chunks.append((t, size))
    return chunks


# --------------------------------------------------------------------------------------------
# File names

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
# Well under the usual 255-byte limit, leaving room for ".<seq>.json" and temporary names.
_MAX_NAME = 200
_HASHED = "~"  # marks a shortened name; not in _SAFE and never produced by escaping


def escape_name(name: str, *, allow_dot: bool = True) -> str:
    """A filesystem-safe, reversible form of `name`: %XX for every byte outside [A-Za-z0-9_.-].

    A leading dot is escaped (no hidden files, no "." or ".."), and so is the first character of
    a name that would collide with the export's marker file. Names longer than 200 characters
    once escaped are cut and suffixed with `~` and a hash: those are not reversible, so readers
    take the namespace from the file content (every file holds it).
    """
    out: list[str] = []
    for i, ch in enumerate(name):
        if ch in _SAFE and (ch != "." or (allow_dot and i > 0)):
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
    escaped = "".join(out)
    if escaped == MARKER_FILE:
        escaped = f"%{ord(escaped[0]):02X}{escaped[1:]}"
    if len(escaped) > _MAX_NAME:
        cut = escaped[: _MAX_NAME - 18]
        cut = cut[: cut.rfind("%")] if "%" in cut[-2:] else cut  # don't split an escape
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        escaped = f"{cut}{_HASHED}{digest}"
    return escaped


def unescape_name(escaped: str) -> str | None:
    """The name `escape_name` was given, or None for a shortened (hashed) or foreign name."""
    if _HASHED in escaped:
        return None
    raw = bytearray()
    i = 0
    while i < len(escaped):
        ch = escaped[i]
        if ch == "%":
            try:
                raw.append(int(escaped[i + 1 : i + 3], 16))
            except ValueError:
                return None
            i += 3
        elif ch in _SAFE:
            raw.extend(ch.encode())
            i += 1
        else:
            return None
    try:
        return raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None


def entry_path(namespace: str, key: str, seq: int = 0) -> str:
    """The relative path of an entry's file: `<namespace>/<key>.json`, or `<key>.<seq>.json`."""
    # Dots in keys are escaped so that "<key>.<seq>" can't be confused with a key holding a dot.
    stem = escape_name(key, allow_dot=False)
    suffix = f".{seq}.json" if seq else ".json"
    return f"{escape_name(namespace)}/{stem}{suffix}"


_FILE_RE = re.compile(r"([^.]+)(?:\.([1-9][0-9]*))?\.json")


@dataclass(frozen=True, slots=True)
class EntryName:
    """What a file's location says about its entry. `namespace` is None for a hashed directory."""

    namespace: str | None
    key: str
    seq: int


def parse_entry_path(directory: str, filename: str) -> EntryName | None:
    """The entry a `<directory>/<filename>` names, or None when it is not an entry file."""
    m = _FILE_RE.fullmatch(filename)
    if m is None or directory.startswith("."):
        return None
    key = unescape_name(m.group(1))
    if key is None:
        return None
    return EntryName(unescape_name(directory), key, int(m.group(2) or 0))


def round_trip(rec: Recording) -> Recording:
    """`from_export(loads(dumps(to_export(rec))))`: what a recording becomes once exported."""
    return from_export(loads(dumps(to_export(rec))))
