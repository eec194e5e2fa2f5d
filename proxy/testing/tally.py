"""The session's cache outcomes, per test, for the end-of-session summary.

Each process that runs tests (the only one, or each xdist worker) keeps a `Tally`; workers send
theirs to the controller as JSON (`to_json` / `merge`), which renders the summary and looks for
recordings no test used.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from llmreel.core.exchange import Exchange
from llmreel.log.view import money
from llmreel.metering.report import RunReport

__all__ = ["Tally", "TestCounts"]


@dataclass(slots=True)
class TestCounts:
    """What one test's calls did."""

    __test__ = False  # not a test class

    calls: int = 0
    hits: int = 0
    recorded: int = 0
    """Misses sent upstream and recorded (record mode's refreshes included)."""
    failed: int = 0
    """Misses sent upstream but not recorded (an error reply, a cut stream)."""
    refused: int = 0
    """Offline misses."""
    cost_usd: float = 0.0
    """What the calls cost, or would have cost without the recordings."""
    spent_usd: float = 0.0
    """What the calls sent upstream cost."""

    def add(self, ex: Exchange) -> None:
        self.calls += 1
        cost = ex.cost_usd or 0.0
        self.cost_usd += cost
        if ex.billed:
            self.spent_usd += cost
        if ex.cache == "hit":
            self.hits += 1
        elif ex.cache == "offline_miss":
            self.refused += 1
        elif ex.cache in ("miss", "refresh"):
            if ex.recorded:
                self.recorded += 1
            else:
                self.failed += 1

    def merge(self, other: TestCounts) -> None:
        for name in ("calls", "hits", "recorded", "failed", "refused", "cost_usd", "spent_usd"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def describe(self) -> str:
        parts = [
            f"{self.refused} offline miss(es)" if self.refused else "",
            f"{self.recorded} new recording(s)" if self.recorded else "",
            f"{self.failed} failed, not recorded" if self.failed else "",
        ]
        return ", ".join(p for p in parts if p)


@dataclass(slots=True)
class Tally:
    tests: dict[str, TestCounts] = field(default_factory=dict)
    """By node id, in the order the tests ran."""
    namespaces: set[str] = field(default_factory=set)
    """Every namespace a test ran in, whether it made calls or not."""
    used: set[tuple[str, str, int]] = field(default_factory=set)
    recorded_now: set[tuple[str, str]] = field(default_factory=set)

    def add_test(self, nodeid: str, namespace: str, exchanges: Iterable[Exchange]) -> TestCounts:
        counts = self.tests.setdefault(nodeid, TestCounts())
        for ex in exchanges:
            counts.add(ex)
            if ex.recorded:
                self.recorded_now.add((ex.namespace, ex.key))
        self.namespaces.add(namespace)
        return counts

    def add_report(self, report: RunReport) -> None:
        """The recordings the proxy served and wrote (its run report, `detailed`)."""
        self.namespaces |= report.namespaces
        self.used |= report.used
        self.recorded_now |= report.recorded_now

    def merge(self, other: Tally) -> None:
        for nodeid, counts in other.tests.items():
            self.tests.setdefault(nodeid, TestCounts()).merge(counts)
        self.namespaces |= other.namespaces
        self.used |= other.used
        self.recorded_now |= other.recorded_now

    def total(self) -> TestCounts:
        out = TestCounts()
        for counts in self.tests.values():
            out.merge(counts)
        return out

    def unused(self, recorded: Iterable[tuple[str, str, int]]) -> list[tuple[str, str]]:
        """(namespace, key) of the recordings in `recorded` that were neither served nor
        written in this session."""
        report = RunReport(detailed=True, used=self.used, recorded_now=self.recorded_now)
        report.find_unused(recorded)
        return report.unused

    def to_json(self) -> dict[str, Any]:
        return {
            "tests": {n: asdict(c) for n, c in self.tests.items()},
            "namespaces": sorted(self.namespaces),
            "used": sorted(self.used),
            "recorded_now": sorted(self.recorded_now),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tally:
        return cls(
            tests={n: TestCounts(**c) for n, c in data["tests"].items()},
            namespaces=set(data["namespaces"]),
            used={(ns, key, int(seq)) for ns, key, seq in data["used"]},
            recorded_now={(ns, key) for ns, key in data["recorded_now"]},
        )

    def render(self, limit: int = 30) -> list[str]:
        """The summary: totals, then each test that missed the cache."""
        total = self.total()
        lines = [
            f"{total.calls} LLM call(s): {total.hits} hit(s), {total.recorded} new "
            f"recording(s), {total.refused} offline miss(es)"
            + (f", {total.failed} failed (not recorded)" if total.failed else "")
            + f"; cost {money(total.cost_usd)}, spent now {money(total.spent_usd)}"
        ]
        missed = [(n, c) for n, c in self.tests.items() if c.describe()]
        lines += [f"  {nodeid}: {counts.describe()}" for nodeid, counts in missed[:limit]]
        if len(missed) > limit:
            lines.append(f"  ... and {len(missed) - limit} more test(s)")
        return lines
