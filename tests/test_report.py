"""The end-of-run report: counts, failure reasons, bounded memory."""

from __future__ import annotations

from llmreel.metering.report import KEEP, Miss, RunReport


def miss(i: int, outcome: str = "offline_miss", ns: str = "t", recorded: bool = True) -> Miss:
    return Miss("POST", "https://api.openai.com/v1/chat/completions", f"k{i}", ns, outcome,
                "The closest recording of this endpoint differs in: temperature: 0.2 -> 0.7.",
                recorded=recorded)  # fmt: skip


def test_failures_follow_the_flags() -> None:
    report = RunReport(detailed=True)
    assert report.failures(fail_on_miss=True, fail_on_unused=True) == []
    report.miss(miss(1))
    report.find_unused([("t", "k9", 0)])
    assert report.failures(fail_on_miss=False, fail_on_unused=False) == []
    reasons = report.failures(fail_on_miss=True, fail_on_unused=True)
    assert reasons == ["1 cache miss(es) (--fail-on-miss)", "1 recording(s) left unused (--fail-on-unused)"]


def test_render_shows_misses_with_their_diff_and_counts_the_unused() -> None:
    report = RunReport(detailed=True)
    report.hit("t", "k0", 0)
    report.miss(miss(1))
    report.miss(miss(2, outcome="miss"))
    report.find_unused([("t", "k0", 0), ("t", "k2", 0), ("t", "k3", 0), ("t", "k4", 0)])
    text = report.render()
    assert text.splitlines()[0] == "llmreel: 1 hit(s), 1 recorded, 1 offline miss(es), 0 recording(s) written, 2 unused"
    assert "MISS POST https://api.openai.com/v1/chat/completions key=k1 namespace=t" in text
    assert "new POST https://api.openai.com/v1/chat/completions key=k2 namespace=t" in text
    assert "temperature: 0.2 -> 0.7" in text
    # A shared store holds many recordings this run had no reason to replay: a count, not a list.
    assert "unused k3" not in text
    assert text.splitlines()[-1] == (
        "  2 recording(s) in the namespaces used were not replayed; -v or --fail-on-unused lists them"
    )
    listed = report.render(list_unused=True)
    assert "unused k3 namespace=t" in listed and "unused k4 namespace=t" in listed
    assert "unused k2" not in listed and "were not replayed" not in listed


def test_a_miss_that_was_not_recorded_is_counted_as_failed() -> None:
    report = RunReport(detailed=True)
    report.miss(miss(1, outcome="miss"))
    report.miss(miss(2, outcome="miss", recorded=False))  # e.g. the upstream answered 500
    assert (report.new, report.failed, report.refused) == (1, 1, 0)
    text = report.render()
    assert text.splitlines()[0].startswith("llmreel: 0 hit(s), 1 recorded, 1 failed (not recorded), ")
    assert "  failed POST https://api.openai.com/v1/chat/completions key=k2" in text
    assert report.failures(fail_on_miss=True, fail_on_unused=False) == ["2 cache miss(es) (--fail-on-miss)"]
    # Nothing was stored for the failed one, so only the recorded one counts as recorded now.
    assert report.recorded_now == {("t", "k1")}


def test_miss_defaults_to_recorded_for_callers_that_do_not_say() -> None:
    report = RunReport()
    report.miss(Miss("POST", "https://x/v1/chat/completions", "k", "t", "miss"))
    assert (report.new, report.failed) == (1, 0)


def test_a_long_running_proxy_keeps_counters_not_every_miss() -> None:
    report = RunReport()
    for i in range(KEEP + 500):
        report.miss(miss(i, outcome="miss"))
        report.hit("t", f"h{i}", 0)
    assert report.new == KEEP + 500 and report.hits == KEEP + 500
    assert len(report.misses) == KEEP and not report.used and not report.recorded_now
    assert "... and" in report.render(limit=5)
