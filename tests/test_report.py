"""The end-of-run report: counts, failure reasons, bounded memory."""

from __future__ import annotations

from llmreel.metering.report import KEEP, Miss, RunReport


def miss(i: int, outcome: str = "offline_miss", ns: str = "t") -> Miss:
    return Miss("POST", "https://api.openai.com/v1/chat/completions", f"k{i}", ns, outcome,
                "The closest recording of this endpoint differs in: temperature: 0.2 -> 0.7.")  # fmt: skip


def test_failures_follow_the_flags() -> None:
    report = RunReport(detailed=True)
    assert report.failures(fail_on_miss=True, fail_on_unused=True) == []
    report.miss(miss(1))
    report.find_unused([("t", "k9", 0)])
    assert report.failures(fail_on_miss=False, fail_on_unused=False) == []
    reasons = report.failures(fail_on_miss=True, fail_on_unused=True)
    assert reasons == ["1 cache miss(es) (--fail-on-miss)", "1 recording(s) left unused (--fail-on-unused)"]


def test_render_shows_misses_with_their_diff_and_the_unused() -> None:
    report = RunReport(detailed=True)
    report.hit("t", "k0", 0)
    report.miss(miss(1))
    report.miss(miss(2, outcome="miss"))
    report.find_unused([("t", "k0", 0), ("t", "k2", 0), ("t", "k3", 0)])
    text = report.render()
    assert text.splitlines()[0] == "llmreel: 1 hit(s), 1 recorded, 1 offline miss(es), 0 recording(s) written, 1 unused"
    assert "MISS POST https://api.openai.com/v1/chat/completions key=k1 namespace=t" in text
    assert "temperature: 0.2 -> 0.7" in text
    assert "unused k3 namespace=t" in text and "unused k2" not in text


def test_a_long_running_proxy_keeps_counters_not_every_miss() -> None:
    report = RunReport()
    for i in range(KEEP + 500):
        report.miss(miss(i, outcome="miss"))
        report.hit("t", f"h{i}", 0)
    assert report.new == KEEP + 500 and report.hits == KEEP + 500
    assert len(report.misses) == KEEP and not report.used and not report.recorded_now
    assert "... and" in report.render(limit=5)
