"""Drift: how a provider's answer to a recorded request differs from the recording. Pure.

Answers differ in their text every time; what breaks an agent is a change of shape: a status,
JSON fields that appeared, vanished or changed type, tool calls with other names or arguments,
or usage far from before. Only those count.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

_TYPES = {
    bool: "bool",
    int: "number",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
}


def json_paths(doc: Any, prefix: str = "") -> dict[str, str]:
    """Every path in `doc` with the type found there; list items share `[]`. Nulls are left out
    (a field that is null in one answer and set in the next is the same field)."""
    found: dict[str, str] = {}

    def walk(node: Any, path: str) -> None:
        if node is None:
            return
        kind = _TYPES.get(type(node), type(node).__name__)
        previous = found.get(path)
        found[path] = kind if previous in (None, kind) else "mixed"
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list):
            for item in node:
                walk(item, f"{path}[]")

    walk(doc, prefix)
    return found


def merged_paths(docs: Iterable[Any]) -> dict[str, str]:
    """The paths of several documents (a stream's events), as one shape."""
    merged: dict[str, str] = {}
    for doc in docs:
        for path, kind in json_paths(doc).items():
            merged[path] = kind if merged.get(path) in (None, kind) else "mixed"
    return merged


@dataclass(slots=True)
class Drift:
    """What changed; empty lists mean no drift."""

    status: tuple[int, int] | None = None
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    retyped: list[str] = field(default_factory=list)
    tools: list[str] = field(default_factory=list)
    usage: list[str] = field(default_factory=list)

    @property
    def drifted(self) -> bool:
        return bool(
            self.status or self.added or self.removed or self.retyped or self.tools or self.usage
        )

    def lines(self) -> list[str]:
        out = [f"status {self.status[0]} -> {self.status[1]}"] if self.status else []
        out += [f"added {p}" for p in self.added] + [f"removed {p}" for p in self.removed]
        out += [f"type changed {p}" for p in self.retyped] + self.tools + self.usage
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": list(self.status) if self.status else None,
            "added": self.added,
            "removed": self.removed,
            "type_changed": self.retyped,
            "tool_calls": self.tools,
            "usage": self.usage,
        }


def compare(
    *,
    old_status: int,
    new_status: int,
    old_paths: Mapping[str, str],
    new_paths: Mapping[str, str],
    old_tools: list[tuple[str, tuple[str, ...]]],
    new_tools: list[tuple[str, tuple[str, ...]]],
    old_usage: Mapping[str, int] | None,
    new_usage: Mapping[str, int] | None,
    tolerance: float,
) -> Drift:
    drift = Drift()
    if old_status != new_status:
        drift.status = (old_status, new_status)
    drift.added = sorted(p for p in new_paths if p not in old_paths)
    drift.removed = sorted(p for p in old_paths if p not in new_paths)
    drift.retyped = sorted(
        f"{p}: {old_paths[p]} -> {new_paths[p]}"
        for p in old_paths.keys() & new_paths.keys()
        if old_paths[p] != new_paths[p]
    )
    if old_tools != new_tools:
        drift.tools = [f"tool calls {_tools(old_tools)} -> {_tools(new_tools)}"]
    for kind in ("input", "output"):
        before, after = (old_usage or {}).get(kind), (new_usage or {}).get(kind)
        if before is None or after is None:
            if (before is None) != (after is None):
                drift.usage.append(f"usage.{kind} {before} -> {after}")
            continue
        if abs(after - before) > tolerance * max(before, 1):
            drift.usage.append(f"usage.{kind} {before} -> {after} (beyond ±{tolerance:.0%})")
    return drift


def _tools(calls: list[tuple[str, tuple[str, ...]]]) -> str:
    return "[" + ", ".join(f"{name}({', '.join(args)})" for name, args in calls) + "]"
