"""How alike several answers to one prompt are: the figures `llmreel probe` and the UI report.

Pure. An answer is its text plus its tool calls; `canonical` writes both as one string (tool
arguments as sorted JSON), and that string is what is grouped, diffed and compared.

- **distinct**: the number of different canonical answers.
- **edit similarity** of a pair: 1 - normalised Levenshtein distance (rapidfuzz), 1.0 when equal.
- **token Jaccard** of a pair: |A ∩ B| / |A ∪ B| over the sets of word and punctuation tokens.
- **stability score**: the mean edit similarity over all pairs of answers (1.0 for one answer).
- **field agreement** (tool calls, or JSON answers): for each field, the share of answers that
  agree with the most common value (see `field_agreement`).
"""

from __future__ import annotations

import difflib
import itertools
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from rapidfuzz.distance import Levenshtein

__all__ = [
    "Answer",
    "Group",
    "Similarity",
    "canonical",
    "field_agreement",
    "group",
    "similarity",
    "word_diff",
]

_TOKEN: Final = re.compile(r"\w+|[^\w\s]")
_DIFF_TOKEN: Final = re.compile(r"\s+|\w+|[^\w\s]")


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer: its text and its tool calls as (name, arguments as JSON text)."""

    text: str
    tool_calls: tuple[tuple[str, str], ...] = ()


def _loads(text: str) -> Any:
    try:
        return orjson.loads(text or "null")
    except orjson.JSONDecodeError:
        return text


def canonical(answer: Answer) -> str:
    """The answer as one string: the text, then one `→ name(arguments)` line per tool call."""
    lines = [answer.text] if answer.text else []
    for name, arguments in answer.tool_calls:
        args = orjson.dumps(_loads(arguments), option=orjson.OPT_SORT_KEYS).decode()
        lines.append(f"→ {name}({args})")
    return "\n".join(lines)


@dataclass(slots=True)
class Group:
    """Answers that are the same once canonical; `runs` are their indexes, in order."""

    answer: str
    runs: list[int] = field(default_factory=list)


def group(answers: Sequence[Answer]) -> list[Group]:
    """Identical answers together, the most common first (ties: first seen first)."""
    groups: dict[str, Group] = {}
    for index, answer in enumerate(answers):
        text = canonical(answer)
        groups.setdefault(text, Group(text)).runs.append(index)
    return sorted(groups.values(), key=lambda g: (-len(g.runs), g.runs[0]))


def _jaccard(a: str, b: str) -> float:
    left, right = set(_TOKEN.findall(a)), set(_TOKEN.findall(b))
    union = left | right
    return 1.0 if not union else len(left & right) / len(union)


@dataclass(frozen=True, slots=True)
class Similarity:
    """Pairwise figures over a set of answers; each is 1.0 when there are fewer than two."""

    edit_mean: float
    edit_min: float
    jaccard_mean: float
    jaccard_min: float
    pairs: int

    @property
    def score(self) -> float:
        """The stability score: the mean pairwise edit similarity."""
        return self.edit_mean

    def as_dict(self) -> dict[str, Any]:
        return {
            "edit": {"mean": round(self.edit_mean, 4), "min": round(self.edit_min, 4)},
            "jaccard": {"mean": round(self.jaccard_mean, 4), "min": round(self.jaccard_min, 4)},
            "pairs": self.pairs,
        }


def similarity(answers: Sequence[Answer]) -> Similarity:
    texts = [canonical(a) for a in answers]
    edits, jaccards = [], []
    for a, b in itertools.combinations(texts, 2):
        edits.append(Levenshtein.normalized_similarity(a, b))
        jaccards.append(_jaccard(a, b))
    if not edits:
        return Similarity(1.0, 1.0, 1.0, 1.0, 0)
    return Similarity(
        statistics.fmean(edits), min(edits), statistics.fmean(jaccards), min(jaccards), len(edits)
    )


# --- field by field ---------------------------------------------------------------------------


def _type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)  # fmt: skip


def _leaves(value: Any, path: str = "") -> Iterable[tuple[str, Any]]:
    """(path, value) for every field of a JSON document: objects by key, arrays by index."""
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list) and value:
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}[{index}]")
    else:
        yield path or "$", value


def _share(values: Sequence[str]) -> float:
    """The share of `values` equal to the most common one."""
    if not values:
        return 1.0
    return Counter(values).most_common(1)[0][1] / len(values)


def _key(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _documents(answers: Sequence[Answer]) -> tuple[str, list[Any]] | None:
    """What to compare field by field: the tool calls, or the JSON answers; None for prose."""
    if any(a.tool_calls for a in answers):
        return "tool_calls", [
            [{"name": name, "arguments": _loads(args)} for name, args in a.tool_calls]
            for a in answers
        ]
    docs = []
    for answer in answers:
        text = answer.text.strip()
        if not text.startswith(("{", "[")):
            return None
        try:
            docs.append(orjson.loads(text))
        except orjson.JSONDecodeError:
            return None
    return ("json", docs) if docs else None


def field_agreement(answers: Sequence[Answer]) -> dict[str, Any] | None:
    """Agreement field by field, for tool calls or JSON answers; None when answers are prose.

    Each figure is the share of answers that agree with the most common value:

    - `tools`: the sequence of tool names called (tool calls only);
    - `keys`: the set of field paths; `types`: the type at every path; `values`: every value;
    - `fields`: per path, `present` (share of answers that have it), `type` and `value` (the
      share of answers with the path that agree with its most common type and value).

    For tool calls the paths are `[0].name`, `[0].arguments.city`, ...
    """
    found = _documents(answers)
    if found is None:
        return None
    kind, docs = found
    leaves = [dict(_leaves(doc)) for doc in docs]
    paths = list(dict.fromkeys(p for leaf in leaves for p in leaf))
    fields = []
    for path in paths:
        values = [leaf[path] for leaf in leaves if path in leaf]
        fields.append({
            "path": path,
            "present": round(len(values) / len(leaves), 4),
            "type": round(_share([_type(v) for v in values]), 4),
            "value": round(_share([_key(v) for v in values]), 4),
        })  # fmt: skip
    out: dict[str, Any] = {"kind": kind}
    if kind == "tool_calls":
        out["tools"] = round(_share([_key([c["name"] for c in doc]) for doc in docs]), 4)
    out["keys"] = round(_share([_key(sorted(leaf)) for leaf in leaves]), 4)
    out["types"] = round(
        _share([_key({p: _type(v) for p, v in leaf.items()}) for leaf in leaves]), 4
    )
    out["values"] = round(_share([_key(doc) for doc in docs]), 4)
    out["fields"] = fields
    return out


# --- diffs ------------------------------------------------------------------------------------


def word_diff(old: str, new: str) -> list[tuple[str, str]]:
    """`new` against `old` word by word: ("=", text), ("-", removed) and ("+", added) runs."""
    a, b = _DIFF_TOKEN.findall(old), _DIFF_TOKEN.findall(new)
    out: list[tuple[str, str]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(("=", "".join(a[i1:i2])))
            continue
        if i2 > i1:
            out.append(("-", "".join(a[i1:i2])))
        if j2 > j1:
            out.append(("+", "".join(b[j1:j2])))
    return out
