"""The stability probe: one request sent N times (perturbed on request), its answers compared.

One implementation for `llmreel probe` and the UI's "Run ×N". The report is a JSON-ready dict
whose shape docs/probe.md documents; `stable` is `score >= threshold`, where the score is the
mean pairwise edit similarity of the answers that came back (`llmreel.core.stability`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from llmreel.core.stability import field_agreement, group, similarity
from llmreel.lab.draft import CannotAsk, Draft, host_of
from llmreel.lab.perturb import perturb
from llmreel.lab.runs import Lab, RunResult

__all__ = ["NAMESPACE", "ProbeSpec", "probe"]

#: The namespace probe runs are logged (and, never, recorded) in.
NAMESPACE: Final = "probe"
REPORT_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    n: int = 10
    perturb: tuple[str, ...] = ()
    seed: int = 0
    threshold: float = 0.9


async def probe(
    lab: Lab,
    record: Mapping[str, Any],
    spec: ProbeSpec,
    *,
    draft: Draft | None = None,
    typed_key: str = "",
    progress: Callable[[int, int], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Probe the request of log `record` (or `draft`, an edited one). Raises CannotAsk when it
    cannot send, or when no run came back with an answer."""
    base = draft or Draft.from_record(record)
    ep = base.endpoint(lab.hosts)
    api = ep.api if ep is not None else ""
    drafts, applied = [], []
    for run in range(spec.n):
        body, names = perturb(api, base.body, spec.perturb, seed=spec.seed, run=run, n=spec.n)
        drafts.append(Draft(base.url, body, dict(base.headers), base.method))
        applied.append((names, _temperature(body)))
    done = 0

    async def on_done(_: RunResult) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            await progress(done, spec.n)

    original = host_of(str(record.get("url") or ""))
    results = await lab.run(drafts, namespace=NAMESPACE, original_host=original,
                            typed_key=typed_key, on_done=on_done)  # fmt: skip
    for result, (names, temperature) in zip(results, applied, strict=True):
        result.perturbations = names
        result.temperature = temperature if "temperature" in names else None
    return report(record, spec, base, results)


def _temperature(body: Mapping[str, Any]) -> Any:
    config = body.get("generationConfig")
    return config.get("temperature") if isinstance(config, dict) else body.get("temperature")


def report(
    record: Mapping[str, Any], spec: ProbeSpec, draft: Draft, results: Sequence[RunResult]
) -> dict[str, Any]:
    answered = [r for r in results if r.ok]
    if not answered:
        errors = sorted({r.error or f"HTTP {r.status}" for r in results})
        raise CannotAsk(f"no run came back with an answer: {'; '.join(errors)}", "no_answer")
    answers = [r.answer() for r in answered]
    groups = group(answers)
    where = {answered[i].index: g for g, grp in enumerate(groups) for i in grp.runs}
    sim = similarity(answers)
    costs = [r.cost_usd for r in results if r.cost_usd is not None]
    return {
        "version": REPORT_VERSION,
        "exchange": record.get("id"),
        "url": draft.url,
        "model": draft.body.get("model") or record.get("model"),
        "n": spec.n,
        "perturb": list(spec.perturb),
        "seed": spec.seed,
        "threshold": spec.threshold,
        "score": round(sim.score, 4),
        "stable": sim.score >= spec.threshold,
        "answered": len(answered),
        "errors": len(results) - len(answered),
        "distinct": len(groups),
        "similarity": sim.as_dict(),
        "fields": field_agreement(answers),
        "cost": {
            "usd": round(sum(costs), 8) if costs else None,
            "unpriced": sum(1 for r in results if r.id and r.cost_usd is None),
            "input_tokens": sum(r.input_tokens or 0 for r in results),
            "output_tokens": sum(r.output_tokens or 0 for r in results),
        },
        "groups": [
            {"answer": g.answer, "count": len(g.runs), "runs": [answered[i].index for i in g.runs]}
            for g in groups
        ],
        "runs": [{**r.as_dict(), "group": where.get(r.index)} for r in results],
    }
