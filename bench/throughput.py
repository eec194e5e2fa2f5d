"""Throughput rounds: every path under the same wrk load, interleaved, with CPU accounting."""

from __future__ import annotations

import http.client
import resource
import time
from dataclasses import dataclass
from typing import Any

from . import payloads
from .load import BODY_HEADER, HIT_SET, Wrk, WrkResult
from .procs import HOST, Proc, cpu_seconds, log, machine_busy, tree_cpu_seconds
from .stats import median


@dataclass(frozen=True)
class Scenario:
    name: str
    target: str
    """Key of the server process (see `main.SERVERS`) that wrk talks to."""
    mode: str
    """wrk prompt mode: "unique" (every request new) or "cycle" (the pre-recorded hit set)."""
    label: str


SCENARIOS = [
    Scenario("direct", "upstream", "unique", "direct to upstream"),
    Scenario("mitmdump_forward", "mitmdump_forward", "unique", "mitmdump forwarding"),
    Scenario("mitmdump_hook", "mitmdump_hook", "cycle", "mitmdump hook answer"),
    Scenario("llmreel_miss", "llmreel", "unique", "llmreel miss (record)"),
    Scenario("llmreel_hit", "llmreel", "cycle", "llmreel hit (replay)"),
    Scenario("llmreel_passthrough", "llmreel_passthrough", "unique", "llmreel passthrough"),
    Scenario("llmreel_miss_w2", "llmreel_w2", "unique", "llmreel miss, 2 workers"),
    Scenario("llmreel_hit_w2", "llmreel_w2", "cycle", "llmreel hit, 2 workers"),
    Scenario(
        "llmreel_passthrough_w2",
        "llmreel_passthrough_w2",
        "unique",
        "llmreel passthrough, 2 workers",
    ),
]

#: (ratio name, numerator scenario, floor scenario)
RATIOS = [
    ("hit_rps_ratio_vs_mitmdump_hook", "llmreel_hit", "mitmdump_hook"),
    ("miss_rps_ratio_vs_mitmdump_forward", "llmreel_miss", "mitmdump_forward"),
    ("passthrough_rps_ratio_vs_mitmdump_forward", "llmreel_passthrough", "mitmdump_forward"),
    ("mitmdump_forward_rps_ratio_vs_direct", "mitmdump_forward", "direct"),
    ("hit_w2_rps_ratio_vs_mitmdump_hook", "llmreel_hit_w2", "mitmdump_hook"),
    ("miss_w2_rps_ratio_vs_mitmdump_forward", "llmreel_miss_w2", "mitmdump_forward"),
    ("passthrough_w2_rps_ratio_vs_mitmdump_forward", "llmreel_passthrough_w2", "mitmdump_forward"),
]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(
    wrk: Wrk, scenario: Scenario, server: Proc, upstream: Proc, seconds: float
) -> dict[str, Any]:
    """One wrk run, plus the CPU the proxy, upstream, wrk and everything else used meanwhile."""
    proxy_cpu = tree_cpu_seconds(server.pid)  # with its workers, if it has any
    up_cpu = cpu_seconds(upstream.pid)
    wrk_cpu = _children_cpu()
    busy, _ = machine_busy()
    started = time.monotonic()
    result: WrkResult = wrk.run(
        server.port, mode=scenario.mode, seconds=seconds, max_requests=int(5000 * seconds)
    )
    elapsed = time.monotonic() - started
    proxy_cpu = tree_cpu_seconds(server.pid) - proxy_cpu
    up_cpu = cpu_seconds(upstream.pid) - up_cpu
    wrk_cpu = _children_cpu() - wrk_cpu
    busy = machine_busy()[0] - busy
    is_proxy = server is not upstream
    row: dict[str, Any] = dict(result.as_dict())
    row["proxy_cpu_ms_per_request"] = (
        round(proxy_cpu * 1000 / result.requests, 3) if is_proxy and result.requests else None
    )
    row["proxy_cpu_cores"] = round(proxy_cpu / elapsed, 3) if is_proxy else None
    own = (proxy_cpu if is_proxy else 0.0) + up_cpu + wrk_cpu
    row["background_cpu_cores"] = round(max(busy - own, 0.0) / elapsed, 3)
    return row


def prerecord_hit_set(port: int, attempts: int = 20) -> int:
    """Send the hit set through llmreel until every one of them is served as a hit."""
    name, _, value = BODY_HEADER.partition(":")
    headers = {"content-type": "application/json", "authorization": "Bearer sk-bench",
               name: value.strip()}  # fmt: skip
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        for attempt in range(attempts):
            hits = 0
            for i in range(HIT_SET):
                conn.request("POST", payloads.PATH, payloads.body(payloads.hit_prompt(i)), headers)
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    raise RuntimeError(f"hit set: status {response.status} from llmreel")
                hits += response.getheader("llmreel-cache") == "hit"
            if hits == HIT_SET:
                return attempt
            time.sleep(0.2)  # let the store's writer commit
    finally:
        conn.close()
    raise RuntimeError(f"the hit set was not recorded after {attempts} passes")


#: A run during which other jobs used more CPU than this (in cores) is repeated, if budget allows.
NOISY_CORES = 0.3


def run_rounds(
    wrk: Wrk,
    servers: dict[str, Proc],
    rounds: int,
    seconds: float,
    warmup: float,
    retries: int = 0,
) -> dict[str, list[dict[str, Any]]]:
    """Warm every path up, then `rounds` rounds of every scenario, in a rotated order.

    A run disturbed by other jobs on the machine is repeated (twice at most, and at most
    `retries` repeats in all), and the least disturbed attempt is kept.
    """
    upstream = servers["upstream"]
    for scenario in SCENARIOS:
        wrk.run(servers[scenario.target].port, mode=scenario.mode, seconds=warmup,
                max_requests=int(5000 * warmup))  # fmt: skip
    runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in SCENARIOS}
    for r in range(rounds):
        order = SCENARIOS[r % len(SCENARIOS) :] + SCENARIOS[: r % len(SCENARIOS)]
        for scenario in order:
            row = measure(wrk, scenario, servers[scenario.target], upstream, seconds)
            attempts = 1
            while row["background_cpu_cores"] > NOISY_CORES and retries > 0 and attempts <= 2:
                log(f"round {r + 1}/{rounds} {scenario.name}: other jobs used "
                    f"{row['background_cpu_cores']:.2f} cores; measuring again")  # fmt: skip
                retries -= 1
                attempts += 1
                again = measure(wrk, scenario, servers[scenario.target], upstream, seconds)
                if again["background_cpu_cores"] < row["background_cpu_cores"]:
                    row = again
            row["round"] = r + 1
            row["attempts"] = attempts
            runs[scenario.name].append(row)
            log(f"round {r + 1}/{rounds} {scenario.name:20s} {row['rps']:8.0f} req/s  "
                f"p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:7.2f} ms  "
                f"background {row['background_cpu_cores']:.2f} cores")  # fmt: skip
    return runs


def aggregate(runs: dict[str, list[dict[str, Any]]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per-scenario medians over rounds, and ratios (median of the per-round ratios)."""
    summary: dict[str, Any] = {}
    for name, rows in runs.items():
        cpu = [r["proxy_cpu_ms_per_request"] for r in rows if r["proxy_cpu_ms_per_request"]]
        summary[name] = {
            "rps_median": round(median([r["rps"] for r in rows]), 1),
            "rps_min": round(min(r["rps"] for r in rows), 1),
            "rps_max": round(max(r["rps"] for r in rows), 1),
            "p50_ms_median": round(median([r["p50_ms"] for r in rows]), 3),
            "p99_ms_median": round(median([r["p99_ms"] for r in rows]), 3),
            "proxy_cpu_ms_per_request_median": round(median(cpu), 3) if cpu else None,
            "bytes_per_response": round(median([r["bytes_per_response"] for r in rows])),
            "rounds": rows,
        }
    ratios: dict[str, Any] = {}
    for ratio, num, floor in RATIOS:
        per_round = [a["rps"] / b["rps"] for a, b in zip(runs[num], runs[floor], strict=True)]
        ratios[ratio] = {
            "median": round(median(per_round), 3),
            "per_round": [round(x, 3) for x in per_round],
            "of_medians": round(summary[num]["rps_median"] / summary[floor]["rps_median"], 3),
        }
        cpu_num = summary[num]["proxy_cpu_ms_per_request_median"]
        cpu_floor = summary[floor]["proxy_cpu_ms_per_request_median"]
        if cpu_num and cpu_floor:
            ratios[ratio]["cpu_per_request_ratio"] = round(cpu_num / cpu_floor, 3)
    return summary, ratios


def checks(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Sanity problems: errors, non-200s, hits that were not hits, misses that were not."""
    problems = []
    for name, rows in runs.items():
        for row in rows:
            where = f"{name} round {row['round']}"
            if row["errors"] or row["non200"]:
                problems.append(f"{where}: {row['errors']} socket errors, {row['non200']} non-200")
            if name.startswith("llmreel_hit") and row["hits"] < row["requests"]:
                problems.append(f"{where}: only {row['hits']} of {row['requests']} were hits")
            if name.startswith("llmreel_miss") and row["misses"] < row["requests"]:
                problems.append(f"{where}: only {row['misses']} of {row['requests']} were misses")
    return problems
