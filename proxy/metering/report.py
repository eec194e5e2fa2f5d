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
    """`miss` (sent upstream) or `offline_miss` (refused)."""
    explanation: str = ""
    """What differs from the closest recording, when one was looked for."""
    recorded: bool = True
    """Whether a `miss` was recorded. False when nothing was stored: the upstream answered with
    an error, or the response was cut or incomplete. Offline misses are never recorded."""


@dataclass(slots=True)
class RunReport:
    """Counts cache outcomes as exchanges finish; `render` turns them into text."""

    run_id: str = ""
    """The run's id (`llmreel run`): its exchanges carry it in the log (`log ls --run`)."""
    hits: int = 0
    spent_usd: float = 0.0
    """US dollars billed upstream during the run."""
    budget_usd: float | None = None
    budget_refusals: int = 0
    misses: list[Miss] = field(default_factory=list)
    """The first `KEEP` misses, in order (a long-running proxy must not keep them all)."""
    new: int = 0
    """Misses recorded now (auto mode)."""
    failed: int = 0
    """Misses sent upstream but not recorded (an error reply, a cut stream)."""
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

    @property
    def missed(self) -> int:
        """Every miss: recorded, failed and refused."""
        return self.new + self.failed + self.refused

    def miss(self, miss: Miss) -> None:
        if miss.outcome == "offline_miss":
            self.refused += 1
        elif miss.recorded:
            self.new += 1
        else:
            self.failed += 1
        if self.detailed:
            self.namespaces.add(miss.namespace)
            if miss.outcome == "miss" and miss.recorded:
                self.recorded_now.add((miss.namespace, miss.key))
        if len(self.misses) < KEEP:
            self.misses.append(miss)

    def merge(self, other: RunReport) -> None:
        """Add `other`'s counts (the report of another worker of the same run)."""
        self.hits += other.hits
        self.spent_usd += other.spent_usd
        self.budget_refusals += other.budget_refusals
        self.new += other.new
        self.failed += other.failed
        self.refused += other.refused
        self.written += other.written
        self.write_failures += other.write_failures
        self.errors += other.errors
        self.misses.extend(other.misses[: max(KEEP - len(self.misses), 0)])
        self.used |= other.used
        self.namespaces |= other.namespaces
        self.recorded_now |= other.recorded_now
        if self.budget_usd is None:
            self.budget_usd = other.budget_usd

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
        if fail_on_miss and self.missed:
            reasons.append(f"{self.missed} cache miss(es) (--fail-on-miss)")
        if fail_on_unused and self.unused:
            reasons.append(f"{len(self.unused)} recording(s) left unused (--fail-on-unused)")
        return reasons

    def as_dict(self) -> dict[str, object]:
        """The report as JSON-ready data (the control API's `GET /report`)."""
        return {
            "run_id": self.run_id or None,
            "hits": self.hits,
            "recorded": self.new,
            "failed": self.failed,
            "offline_misses": self.refused,
            "written": self.written,
            "write_failures": self.write_failures,
            "errors": self.errors,
            "spent_usd": round(self.spent_usd, 6),
            "budget_usd": self.budget_usd,
            "budget_refusals": self.budget_refusals,
            "misses": [
                {"method": m.method, "url": m.url, "key": m.key, "namespace": m.namespace,
                 "outcome": m.outcome, "recorded": m.recorded, "explanation": m.explanation or None}
                for m in self.misses
            ],
        }  # fmt: skip

    def render(self, limit: int = 20, *, list_unused: bool = False) -> str:
        """The report. Unused recordings are counted; `list_unused` lists them too (a shared
        store can hold thousands that this run had no reason to replay)."""
        lines = [
            f"llmreel: {self.hits} hit(s), {self.new} recorded, "
            + (f"{self.failed} failed (not recorded), " if self.failed else "")
            + f"{self.refused} offline miss(es), {self.written} recording(s) written"
            + (f", {self.write_failures} NOT written" if self.write_failures else "")
            + (f", {len(self.unused)} unused" if self.unused else "")
            + (f" (run {self.run_id})" if self.run_id else "")
        ]
        if self.budget_usd is not None:
            lines.append(
                f"  spent ${self.spent_usd:.4f} of a ${self.budget_usd:.4f} budget"
                + (f"; {self.budget_refusals} call(s) refused" if self.budget_refusals else "")
            )
        for m in self.misses[:limit]:
            label = "MISS" if m.outcome == "offline_miss" else "new" if m.recorded else "failed"
            lines.append(f"  {label} {m.method} {m.url} key={m.key} namespace={m.namespace}")
            if m.explanation:
                lines.extend(f"      {line}" for line in m.explanation.splitlines())
        shown = min(len(self.misses), limit)
        if self.missed > shown:
            lines.append(f"  ... and {self.missed - shown} more")
        if self.unused and not list_unused:
            lines.append(
                f"  {len(self.unused)} recording(s) in the namespaces used were not replayed; "
                "-v or --fail-on-unused lists them"
            )
        elif self.unused:
            lines.extend(f"  unused {key} namespace={ns}" for ns, key in self.unused[:limit])
            if len(self.unused) > limit:
                lines.append(f"  ... and {len(self.unused) - limit} more unused")
        return "\n".join(lines)
