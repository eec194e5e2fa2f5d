"""Why a request missed: the closest recorded request, and what changed, field by field.

`closest` picks, among recorded canonical requests, the one most like a new request to the same
endpoint; `field_diff` lists the changes as JSON paths (`body.messages[2].content`,
`body.temperature`, `query.alt`, `headers.anthropic-beta`); `describe` turns them into one short
line for an error body or a log:

    messages[2].content: 'Hi' -> 'Hello'; stream: absent -> false; tools[1] added: {"type":…

A field present on one side only reads `absent -> value` (or `value -> absent`); a list item
inserted or dropped reads `added` or `removed`.

Cost: `closest` hashes each candidate's top-level body fields and list items once (orjson and
Python's bytes hash) and scores all of them by multiset overlap, then diffs only the best five
in full. That is about 3 µs per field or message: 3,000 recorded requests of 30 messages each
take about 0.3 s on one core, 3,000 one-message requests about 0.1 s. So callers do not pass
every recording: a store keeps a `sketch` of each recorded request, 128 bytes that estimate the
same overlap (`resemblance`), and hands `closest` only the few most alike of the same
`endpoint` (`Store.candidates`). Pure: no I/O.
"""

from __future__ import annotations

import bisect
import difflib
import hashlib
import re
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "Change",
    "closest",
    "describe",
    "endpoint",
    "explain",
    "field_diff",
    "likeness",
    "resemblance",
    "sketch",
]

#: Candidates kept after the cheap overlap score, to be compared field by field.
_SHORTLIST = 5
#: Display width of a value in a change.
_WIDTH = 60
# Lists longer than this are compared index by index: sequence alignment is quadratic.
_ALIGN_MAX = 2000
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_NO_LIMIT = 1 << 32  # above every 32-bit hash
#: Hashes kept in a `sketch` (4 bytes each). With 16, a candidate among hundreds of near-copies
#: (one growing conversation) often ranked below the 32 that a store decodes; 32 kept it in.
_SKETCH_HASHES = 32
# A path ending in a list index (`messages[3]`); quoted keys (`["a b"]`) are fields.
_ITEM = re.compile(r"\[\d+\]$")
#: How a change shows the side where a field does not exist (values are JSON or quoted).
_ABSENT = "absent"


@dataclass(frozen=True, slots=True)
class Change:
    """One difference. `path` is JSON-path-like; `old`/`new` are short display texts."""

    path: str
    kind: str
    """"changed", "added" or "removed" (present in the new or the old request only)."""
    old: str | None = None
    new: str | None = None

    def __str__(self) -> str:
        where = _short_path(self.path)
        if self.kind in ("added", "removed") and _ITEM.search(self.path):
            # A list item: "messages[3] added" says an item was inserted there.
            shown = self.new if self.kind == "added" else self.old
            return f"{where} {self.kind}: {shown}"
        # A field: "stream removed: false" would read as an answer to "removed?", so a field
        # present on one side only shows the other side as absent.
        old = _ABSENT if self.kind == "added" else self.old
        new = _ABSENT if self.kind == "removed" else self.new
        return f"{where}: {old} -> {new}"


# --------------------------------------------------------------------------------------------
# Choosing the closest recorded request


def endpoint(request: dict[str, Any]) -> tuple[Any, ...]:
    """(method, host, port, path): only recordings of the same endpoint explain a miss."""
    return (
        str(request.get("method", "")).upper(),
        str(request.get("host", "")).lower(),
        request.get("port"),
        request.get("path"),
    )


def _digest(value: Any) -> bytes:
    return hashlib.blake2b(_encoded(value), digest_size=8).digest()


def _encoded(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return repr(value).encode()


def _parts(request: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(name, value) of each query pair, header, top-level body field and list item.

    List items come without their index, so an inserted message changes one part rather than
    shifting every later one.
    """
    for name, value in request.get("query") or []:
        yield "q:" + str(name), value
    for name, value in (request.get("headers") or {}).items():
        yield "h:" + str(name), value
    body = request.get("body")
    if isinstance(body, dict):
        for name, value in body.items():
            if isinstance(value, list):
                yield "b:" + name + "#len", len(value)
                for item in value:
                    yield "b:" + name + "[]", item
            else:
                yield "b:" + name, value
    else:
        yield "b", body


def _features(request: dict[str, Any]) -> Counter[tuple[str, int]]:
    """The bag (multiset) of hashed parts that `closest` compares."""
    return Counter((name, _quick(value)) for name, value in _parts(request))


def sketch(request: dict[str, Any]) -> bytes:
    """A small fingerprint of `request`'s parts, to compare with others' by `resemblance`.

    A bottom-k sketch: the 32 smallest 32-bit hashes of its parts (the n-th copy of a part is an
    element of its own, as in the bag `closest` compares), 128 bytes at most. The hashes are
    blake2b, not Python's per-process `hash`, so a sketch can be stored beside its recording.
    """
    copies: Counter[bytes] = Counter()
    hashes: set[int] = set()
    for name, value in _parts(request):
        part = name.encode() + b"\x00" + _encoded(value)
        copies[part] += 1
        nth = part + copies[part].to_bytes(4, "big")
        hashes.add(int.from_bytes(hashlib.blake2b(nth, digest_size=4).digest(), "big"))
    smallest = sorted(hashes)[:_SKETCH_HASHES]
    return struct.pack(f">{len(smallest)}I", *smallest)


def resemblance(a: bytes, b: bytes) -> float:
    """How alike the requests behind two sketches are: their estimated overlap, in [0, 1]."""
    return likeness(a)(b)


def likeness(a: bytes) -> Callable[[bytes], float]:
    """`resemblance(a, b)` as a function of `b`: faster for comparing one sketch with many.

    The overlap is counted over the hashes up to the smaller of the two sketches' largest (all
    of them for a sketch that holds every part): below that, each sketch holds every hash of
    its request, so this is the exact overlap of a random sample of the parts.
    """
    mine = _hashes(a)
    mine_set = frozenset(mine)
    mine_top = mine[-1] if len(mine) >= _SKETCH_HASHES else _NO_LIMIT

    def score(b: bytes) -> float:
        theirs = _hashes(b)
        shared = len(mine_set.intersection(theirs))
        top = min(mine_top, theirs[-1] if len(theirs) >= _SKETCH_HASHES else _NO_LIMIT)
        if top == _NO_LIMIT:  # both hold every part
            counted = len(mine) + len(theirs) - shared
        else:  # every shared hash is <= top: it is in both sketches
            counted = bisect.bisect_right(mine, top) + bisect.bisect_right(theirs, top) - shared
        return shared / counted if counted else 1.0

    return score


def _hashes(packed: bytes) -> tuple[int, ...]:
    """A sketch's hashes, ascending."""
    return struct.unpack(f">{len(packed) // 4}I", packed)


def _quick(value: Any) -> int:
    # Python's own bytes hash: a collision only makes the prefilter slightly optimistic.
    return hash(_encoded(value))


def _overlap(a: Counter[tuple[str, int]], size_a: int, b: Counter[tuple[str, int]]) -> float:
    # Multiset Jaccard, without building the union and intersection Counters.
    shared = sum(min(n, a[k]) for k, n in b.items() if k in a)
    union = size_a + b.total() - shared
    return shared / union if union else 1.0


def closest(
    request: dict[str, Any], candidates: Iterable[dict[str, Any]]
) -> tuple[dict[str, Any], float] | None:
    """The recorded request most like `request`, with a similarity in [0, 1] (1: identical).

    Only candidates for the same endpoint (method, host, port, path) count; pass those of the
    request's namespace. None when there is no such candidate.
    """
    target = endpoint(request)
    mine = _features(request)
    size = mine.total()
    scored: list[tuple[float, int, dict[str, Any]]] = []
    for index, candidate in enumerate(candidates):
        if endpoint(candidate) != target:
            continue
        scored.append((_overlap(mine, size, _features(candidate)), index, candidate))
    if not scored:
        return None
    # Earliest wins among equals: `index` keeps the choice stable for a stable candidate order.
    scored.sort(key=lambda s: (-s[0], s[1]))
    best: tuple[float, int, dict[str, Any]] | None = None
    for overlap, index, candidate in scored[:_SHORTLIST]:
        changes = len(field_diff(candidate, request))
        # Fewer field-level changes first; the overlap score breaks ties.
        score = overlap / (1 + changes) if changes else 1.0
        if best is None or (score, -index) > (best[0], -best[1]):
            best = (score, index, candidate)
    assert best is not None
    return best[2], round(best[0], 4)


# --------------------------------------------------------------------------------------------
# Field-level differences


def field_diff(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """What changed from the recorded canonical request `old` to the new one `new`."""
    changes: list[Change] = []
    for name in ("method", "scheme", "host", "port", "path"):
        if old.get(name) != new.get(name):
            changes.append(Change(name, "changed", _show(old.get(name)), _show(new.get(name))))
    _diff(_query_map(old.get("query")), _query_map(new.get("query")), "query", changes)
    _diff(old.get("headers") or {}, new.get("headers") or {}, "headers", changes)
    _diff(old.get("body"), new.get("body"), "body", changes)
    return changes


def _query_map(query: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in query or []:
        if name in out:
            previous = out[name]
            out[name] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            out[name] = value
    return out


def _child(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _IDENT.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{_quote(key)}]"


def _quote(text: str) -> str:
    return orjson.dumps(text).decode()


def _diff(old: Any, new: Any, path: str, out: list[Change]) -> None:
    # `==` alone says 1 == 1.0 and True == 1, which the key (orjson bytes) tells apart.
    if old == new and _digest(old) == _digest(new):
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(old.keys() | new.keys()):
            where = _child(path, key)
            if key not in new:
                out.append(Change(where, "removed", old=_show(old[key])))
            elif key not in old:
                out.append(Change(where, "added", new=_show(new[key])))
            else:
                _diff(old[key], new[key], where, out)
        return
    if isinstance(old, list) and isinstance(new, list):
        _diff_list(old, new, path, out)
        return
    if isinstance(old, str) and isinstance(new, str):
        before, after = _excerpts(old, new)
        out.append(Change(path, "changed", before, after))
        return
    out.append(Change(path, "changed", _show(old), _show(new)))


def _diff_list(old: list[Any], new: list[Any], path: str, out: list[Change]) -> None:
    if len(old) > _ALIGN_MAX or len(new) > _ALIGN_MAX:
        _pairwise(old, new, 0, 0, min(len(old), len(new)), path, out)
        for i in range(len(new), len(old)):
            out.append(Change(_child(path, i), "removed", old=_show(old[i])))
        for j in range(len(old), len(new)):
            out.append(Change(_child(path, j), "added", new=_show(new[j])))
        return
    # Align whole items (messages, tools) so that an inserted message is reported as one
    # insertion, not as every later message changing.
    matcher = difflib.SequenceMatcher(
        None, [_digest(x) for x in old], [_digest(x) for x in new], autojunk=False
    )
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        paired = min(i2 - i1, j2 - j1) if tag == "replace" else 0
        _pairwise(old, new, i1, j1, paired, path, out)
        for i in range(i1 + paired, i2):
            out.append(Change(_child(path, i), "removed", old=_show(old[i])))
        for j in range(j1 + paired, j2):
            out.append(Change(_child(path, j), "added", new=_show(new[j])))


def _pairwise(
    old: list[Any], new: list[Any], i: int, j: int, count: int, path: str, out: list[Change]
) -> None:
    for k in range(count):
        # Paths use the new request's index: that is the one the user can find in their code.
        _diff(old[i + k], new[j + k], _child(path, j + k), out)


def _show(value: Any) -> str:
    if isinstance(value, str):
        return _clip(repr(value))
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return _clip(text)


def _clip(text: str, width: int = _WIDTH) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _excerpts(old: str, new: str) -> tuple[str, str]:
    """Both strings cut to the region that differs, with a little context, for display."""
    if len(repr(old)) <= _WIDTH and len(repr(new)) <= _WIDTH:
        return repr(old), repr(new)
    prefix = 0
    limit = min(len(old), len(new))
    while prefix < limit and old[prefix] == new[prefix]:
        prefix += 1
    suffix = 0
    while suffix < limit - prefix and old[len(old) - 1 - suffix] == new[len(new) - 1 - suffix]:
        suffix += 1
    start = max(prefix - 15, 0)

    def cut(text: str) -> str:
        end = min(len(text) - suffix + 15, len(text))
        shown = _clip(repr(text[start:end]))
        return ("…" if start else "") + shown + ("…" if end < len(text) else "")

    return cut(old), cut(new)


def _short_path(path: str) -> str:
    # Body fields are what users change; "body." would only be noise in a one-line summary.
    return path[len("body.") :] if path.startswith("body.") else path


def describe(changes: list[Change], limit: int = 8) -> str:
    """A short text: `messages[2].content: 'Hi' -> 'Hello'; temperature: 0.2 -> 0.3`.

    At most `limit` changes are spelled out; the rest are counted.
    """
    if not changes:
        return "no differences"
    parts = [str(c) for c in changes[:limit]]
    if len(changes) > limit:
        parts.append(f"and {len(changes) - limit} more changes")
    return "; ".join(parts)


def explain(request: dict[str, Any], candidates: Iterable[dict[str, Any]]) -> str | None:
    """One sentence for a miss: how the closest recording of the same endpoint differs.

    None when nothing was recorded for that endpoint (in the candidates given).
    """
    found = closest(request, candidates)
    if found is None:
        return None
    recorded, _score = found
    changes = field_diff(recorded, request)
    if not changes:
        return "A recording with the same request exists (in another sequence position)."
    return f"The closest recording of this endpoint differs in: {describe(changes)}."
