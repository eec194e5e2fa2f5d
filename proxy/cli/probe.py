"""`llmreel probe`: does a logged request give the same answer every time, and under small changes?

Exits 0 when stable (score >= --threshold), 1 when not, 2 when it cannot ask (offline, no key,
no proxy, no answer). docs/probe.md describes the score and the --json shape.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import click

from llmreel.cli.log import _open_log
from llmreel.cli.server import DEFAULT_CONFDIR
from llmreel.lab.draft import CannotAsk
from llmreel.lab.perturb import PERTURBATIONS, parse_perturbations
from llmreel.lab.probe import ProbeSpec, probe
from llmreel.lab.proxyproc import ProxyProcess
from llmreel.lab.runs import Lab
from llmreel.log.exchangelog import AmbiguousExchange, UnknownExchange
from llmreel.providers import DEFAULT_HOSTS, parse_host_mappings

__all__ = ["probe_command"]


def _perturbations(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    try:
        return parse_perturbations(value or "")
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command("probe")
@click.argument("exchange_id")
@click.option("--n", "n", type=click.IntRange(1, 1000), default=10, show_default=True,
              help="How many times to send the request.")  # fmt: skip
@click.option(
    "--perturb",
    default="",
    callback=_perturbations,
    metavar="NAMES",
    help=f"Comma-separated perturbations of runs 1..N-1: {', '.join(PERTURBATIONS)}.",
)
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the perturbations: the same seed gives the same requests.")  # fmt: skip
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    default=0.9,
    show_default=True,
    help="Exit 1 when the stability score (mean pairwise edit similarity) is below.",
)
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON document.")
@click.option("--store", default=".llmreel", show_default=True, envvar="LLMREEL_STORE",
              show_envvar=True, help="The store whose log holds the exchange.")  # fmt: skip
@click.option("--proxy", default="", metavar="URL", envvar="LLMREEL_PROXY",
              help="A running llmreel proxy writing to --store; default: start one.")  # fmt: skip
@click.option("--confdir", default=DEFAULT_CONFDIR, show_default=True,
              help="Where the mitmproxy CA lives.")  # fmt: skip
@click.option("--provider-host", "hosts", multiple=True, metavar="HOST=PROVIDER",
              help="Treat HOST as PROVIDER, as for serve. Repeatable.")  # fmt: skip
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds per call.")
def probe_command(exchange_id: str, n: int, perturb: tuple[str, ...], seed: int,
                  threshold: float, as_json: bool, store: str, proxy: str, confdir: str,
                  hosts: tuple[str, ...], timeout: float) -> None:  # fmt: skip
    """Send a logged request N times (cache bypassed) and report how stable its answers are.

    Reports the distinct answers, their pairwise similarity (edit distance and token Jaccard),
    field-by-field agreement of tool calls and JSON answers, and what the probe cost. Keys come
    from OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY/GOOGLE_API_KEY.

    \b
        llmreel probe 01JZ8... --n 10 --perturb whitespace,case --threshold 0.9
    """
    try:
        host_map = DEFAULT_HOSTS.merged(parse_host_mappings(hosts))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--provider-host") from exc
    spec = ProbeSpec(n=n, perturb=perturb, seed=seed, threshold=threshold)
    with _open_log(store) as exchange_log:
        try:
            record = exchange_log.get(exchange_id)
        except (UnknownExchange, AmbiguousExchange) as exc:
            raise click.ClickException(str(exc)) from exc
        via: str | ProxyProcess = proxy or ProxyProcess(
            store,
            confdir=confdir,
            hosts=[f"{h}={p}" for h, p in parse_host_mappings(hosts).items()],
        )
        lab = Lab(exchange_log, proxy=via, confdir=confdir, hosts=host_map, timeout_s=timeout,
                  offline=os.environ.get("LLMREEL_MODE") == "offline")  # fmt: skip
        try:
            result = asyncio.run(_probe(lab, record, spec))
        except CannotAsk as exc:
            click.echo(f"llmreel probe: {exc}", err=True)
            sys.exit(2)
    if as_json:
        click.echo(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        click.echo(render(result))
    sys.exit(0 if result["stable"] else 1)


async def _probe(lab: Lab, record: dict[str, Any], spec: ProbeSpec) -> dict[str, Any]:
    async def progress(done: int, total: int) -> None:
        click.echo(f"\rllmreel probe: {done}/{total} answers", err=True, nl=done == total)

    try:
        return await probe(lab, record, spec, progress=progress)
    finally:
        await lab.aclose()


def render(result: dict[str, Any]) -> str:
    sim = result["similarity"]
    verdict = "STABLE" if result["stable"] else "UNSTABLE"
    lines = [
        f"{verdict} score {result['score']:.3f} (threshold {result['threshold']:g}): "
        f"{result['distinct']} distinct answer(s) in {result['answered']} "
        f"({result['errors']} error(s))",
        f"similarity: edit mean {sim['edit']['mean']:.3f} min {sim['edit']['min']:.3f}, "
        f"token Jaccard mean {sim['jaccard']['mean']:.3f} min {sim['jaccard']['min']:.3f}",
    ]
    fields = result["fields"]
    if fields:
        figures = ", ".join(f"{k} {fields[k]:.2f}" for k in ("tools", "keys", "types", "values")
                            if k in fields)  # fmt: skip
        lines.append(f"{fields['kind']} agreement: {figures}")
        lines += [f"  {f['path']}: value {f['value']:.2f}, type {f['type']:.2f}, "
                  f"present {f['present']:.2f}" for f in fields["fields"] if f["value"] < 1]  # fmt: skip
    cost = result["cost"]
    usd = "unknown" if cost["usd"] is None else f"${cost['usd']:.6f}"
    lines.append(
        f"cost: {usd} ({cost['input_tokens']} input, {cost['output_tokens']} output tokens)"
    )
    for number, grp in enumerate(result["groups"], 1):
        preview = grp["answer"].replace("\n", " ⏎ ")
        preview = preview if len(preview) <= 100 else preview[:99] + "…"
        lines.append(f"#{number} ×{grp['count']} runs {grp['runs']}: {preview}")
    for run in result["runs"]:
        if run["error"] or not (run["status"] and 200 <= run["status"] < 300):
            lines.append(
                f"run {run['index']} failed: {run['error'] or 'HTTP ' + str(run['status'])}"
            )
    return "\n".join(lines)
