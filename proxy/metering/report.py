"""What happened to the cache during one run: the end-of-run report of `llmreel run`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

KEEP = 1000


@dataclass(frozen=True, slots=True)
class Miss:
    method: str
    url: str
    key: str
    namespace: str
    outcome: str
    """`miss` (recorded now) or `offline_miss` (refused)."""
    explanation: str = ""
    """What differs from the closest recording, when one was looked for."""


@dataclass(slots=True)
class RunReport:
    """Counts cache outcomes as exchanges finish; `render` turns them into text."""

    hits: int = 0
    misses: list[Miss] = field(default_factory=list)
    """The first `KEEP` misses, in order (a long-running proxy must not keep them all)."""
    new: int = 0
    """Misses recorded now (auto mode)."""
    refused: int = 0
    """Offline misses."""
    written: int = 0
    write_failures: int = 0
    errors: int = 0
    used: set[tuple[str, str, int]] = field(default_factory=set)
    """(namespace, key, seq) of every recording served."""
    namespaces: set[str] = field(default_factory=set)
    unused: list[tuple[str, str]] = field(default_factory=list)
    """(namespace, key) of recordings never served in the namespaces used; filled at the end."""
    recorded_now: set[tuple[str, str]] = field(default_factory=set)
    detailed: bool = False
    """Keep the per-recording sets `find_unused` needs (`llmreel run`); a long-running proxy
    keeps counters only, so its memory does not grow with traffic."""

    def hit(self, namespace: str, key: str, seq: int) -> None:
        self.hits += 1
        if self.detailed:
            self.namespaces.add(namespace)
            self.used.add((namespace, key, seq))

    def miss(self, miss: Miss) -> None:
        if miss.outcome == "offline_miss":
            self.refused += 1
        else:
            self.new += 1
        if self.detailed:
            self.namespaces.add(miss.namespace)
            if miss.outcome == "miss":
                self.recorded_now.add((miss.namespace, miss.key))
        if len(self.misses) < KEEP:
            self.misses.append(miss)

    def find_unused(self, recorded: Iterable[tuple[str, str, int]]) -> None:
        """Given every (namespace, key, seq) stored in the namespaces used, keep the unserved."""
        self.unused = sorted(
            {
                (ns, key)
                for ns, key, seq in recorded
                if (ns, key, seq) not in self.used and (ns, key) not in self.recorded_now
            }
        )

    def failures(self, *, fail_on_miss: bool, fail_on_unused: bool) -> list[str]:
        """Reasons the run should fail, beyond the command's own exit code."""
        reasons = []
        if fail_on_miss and (self.new or self.refused):
            reasons.append(f"{self.new + self.refused} cache miss(es) (--fail-on-miss)")
        if fail_on_unused and self.unused:
            reasons.append(f"{len(self.unused)} recording(s) left unused (--fail-on-unused)")
        return reasons

    def render(self, limit: int = 20) -> str:
        lines = [
            f"llmreel: {self.hits} hit(s), {self.new} recorded, "
            f"{self.refused} offline miss(es), {self.written} recording(s) written"
            + (f", {self.write_failures} NOT written" if self.write_failures else "")
            + (f", {len(self.unused)} unused" if self.unused else "")
        ]
        for m in self.misses[:limit]:
            label = "MISS" if m.outcome == "offline_miss" else "new"
            lines.append(f"  {label} {m.method} {m.url} key={m.key} namespace={m.namespace}")
            if m.explanation:
                lines.extend(f"      {line}" for line in m.explanation.splitlines())
        shown = min(len(self.misses), limit)
        if self.new + self.refused > shown:
            lines.append(f"  ... and {self.new + self.refused - shown} more")
        for ns, key in self.unused[:limit]:
            lines.append(f"  unused {key} namespace={ns}")
        if len(self.unused) > limit:
            lines.append(f"  ... and {len(self.unused) - limit} more unused")
        return "\n".join(lines)
