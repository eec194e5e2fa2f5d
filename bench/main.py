"""`bench/run`: llmreel against its floors, side by side, in one run on this machine.

Phases: start the servers (fake upstream, three bare mitmdumps, two llmreels) -> throughput
rounds with wrk -> streaming rounds (TTFC, gaps) -> RSS with 100 concurrent streams (a fresh
llmreel) -> optional py-spy profiles -> LMDB store at scale -> explained misses at 10k
recordings -> results.json, markdown, plot.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import hooks, missbench, profile, report, storebench, streams, throughput
from .load import Wrk
from .procs import (
    ROOT,
    Proc,
    Procs,
    free_port,
    llmreel_argv,
    log,
    mitmdump_argv,
    raise_priority,
    rss_anon_mb,
    upstream_argv,
)
from .stats import median, summarize_ms


@dataclass(frozen=True)
class Config:
    quick: bool
    rounds: int
    seconds: float
    warmup: float
    connections: int
    streams: int
    """Sequential streams per path per round."""
    stream_delay_ms: int
    concurrent_streams: int
    concurrent_delay_ms: int
    store_scales: list[int]
    lookups: int
    inserts: int
    profile_s: float
    """0: no profiling."""
    retries: int
    """Throughput runs that may be repeated because other jobs disturbed them."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Config:
        quick = args.quick
        return cls(
            quick=quick,
            rounds=args.rounds or (1 if quick else 5),
            seconds=args.seconds or (2.0 if quick else 6.0),
            warmup=1.0,
            connections=10,
            streams=4 if quick else 20,
            stream_delay_ms=10,
            concurrent_streams=100,
            concurrent_delay_ms=100,
            store_scales=[10_000] if quick else [10_000, 100_000, 1_000_000],
            lookups=5_000 if quick else 20_000,
            inserts=100 if quick else 300,
            profile_s=0.0 if args.no_profile or (quick and not args.profile) else 8.0,
            retries=0 if quick else 9,
        )


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="Under a minute: 1 round of 2 s, 10k store only, no profile. "
                        "Writes to bench/out/quick/ unless --out is given.")  # fmt: skip
    parser.add_argument("--rounds", type=int, help="Throughput/streaming rounds (default 5).")
    parser.add_argument("--seconds", type=float, help="Seconds per wrk run (default 6).")
    parser.add_argument("--profile", action="store_true", help="Profile even with --quick.")
    parser.add_argument("--no-profile", action="store_true", help="Skip the py-spy profiles.")
    parser.add_argument("--skip-store", action="store_true", help="Skip the store-at-scale part.")
    parser.add_argument("--out", type=Path,
                        help="Directory for results.json, benchmarks.md and benchmarks.png "
                        "(default: bench/results.json and docs/ for a full run).")  # fmt: skip
    return parser.parse_args(argv)


def _outputs(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    if args.out is not None:
        out: Path = args.out
    elif args.quick:
        out = ROOT / "bench" / "out" / "quick"
    else:
        return (
            ROOT / "bench" / "results.json",
            ROOT / "docs" / "benchmarks.md",
            ROOT / "docs" / "benchmarks.png",
        )
    out.mkdir(parents=True, exist_ok=True)
    return out / "results.json", out / "benchmarks.md", out / "benchmarks.png"


# --- servers ----------------------------------------------------------------------------------


def start_servers(procs: Procs, work: Path) -> dict[str, Proc]:
    from mitmproxy.certs import CertStore

    confdir = work / "confdir"
    CertStore.from_store(str(confdir), "mitmproxy", 2048)  # once, before the proxies race for it
    up_port = free_port()
    specs: dict[str, list[str]] = {}
    ports: dict[str, int] = {"upstream": up_port}
    for name in ("mitmdump_forward", "mitmdump_hook", "mitmdump_stream", "llmreel",
                 "llmreel_passthrough", "llmreel_w2", "llmreel_passthrough_w2"):  # fmt: skip
        ports[name] = free_port()
    specs["upstream"] = upstream_argv(up_port)
    specs["mitmdump_forward"] = mitmdump_argv(ports["mitmdump_forward"], up_port, confdir)
    specs["mitmdump_hook"] = mitmdump_argv(ports["mitmdump_hook"], up_port, confdir, "hook.py")
    specs["mitmdump_stream"] = mitmdump_argv(
        ports["mitmdump_stream"], up_port, confdir, "stream.py"
    )
    specs["llmreel"] = llmreel_argv(ports["llmreel"], up_port, work / "store-auto", confdir)
    specs["llmreel_passthrough"] = llmreel_argv(
        ports["llmreel_passthrough"], up_port, work / "store-pass", confdir, mode="passthrough"
    )
    specs["llmreel_w2"] = llmreel_argv(
        ports["llmreel_w2"], up_port, work / "store-auto-w2", confdir, workers=2
    )
    specs["llmreel_passthrough_w2"] = llmreel_argv(
        ports["llmreel_passthrough_w2"],
        up_port,
        work / "store-pass-w2",
        confdir,
        mode="passthrough",
        workers=2,
    )
    servers = {name: procs.spawn(name, argv, ports[name]) for name, argv in specs.items()}
    procs.wait_ready(*servers.values())
    return servers


# --- streaming --------------------------------------------------------------------------------

STREAM_PATHS = [("direct", "upstream"), ("mitmdump_stream", "mitmdump_stream"),
                ("llmreel", "llmreel")]  # fmt: skip


def run_streaming(servers: dict[str, Proc], cfg: Config) -> dict[str, Any]:
    """Sequential streams per path, rounds interleaved; llmreel's are then replayed as hits."""
    samples: dict[str, list[streams.Stream]] = {p: [] for p, _ in STREAM_PATHS}
    samples["llmreel_replay"] = []
    per_round: dict[str, list[float]] = {p: [] for p in samples}
    for r in range(cfg.rounds):
        order = STREAM_PATHS[r % 3 :] + STREAM_PATHS[: r % 3]
        for path, server in order:
            prompts = streams.prompts(cfg.streams + 1)  # the first one opens connections
            got = asyncio.run(
                streams.sequential(servers[server].port, prompts, cfg.stream_delay_ms)
            )[1:]
            samples[path] += got
            per_round[path].append(median([s.ttfc_ms for s in got]))
            if path == "llmreel":
                if any(s.cache != "miss" for s in got):
                    raise RuntimeError("llmreel streams were not misses")
                time.sleep(0.3)  # let the recordings commit
                again = asyncio.run(
                    streams.sequential(servers[server].port, prompts, cfg.stream_delay_ms)
                )[1:]
                if any(s.cache != "hit" for s in again):
                    raise RuntimeError("replayed llmreel streams were not hits")
                samples["llmreel_replay"] += again
                per_round["llmreel_replay"].append(median([s.ttfc_ms for s in again]))
        log(f"streaming round {r + 1}/{cfg.rounds}: TTFC medians "
            + ", ".join(f"{p} {v[-1]:.2f} ms" for p, v in per_round.items()))  # fmt: skip
    result: dict[str, Any] = {"delay_ms": cfg.stream_delay_ms, "paths": {}}
    for path, got in samples.items():
        gaps = [g for s in got for g in s.gaps_ms]
        result["paths"][path] = {
            "streams": len(got),
            "events_per_stream": round(median([len(s.event_times) for s in got])),
            "ttfc_ms": summarize_ms([s.ttfc_ms for s in got]),
            "ttfc_ms_round_medians": [round(v, 3) for v in per_round[path]],
            "gap_ms": summarize_ms(gaps) if gaps else None,
        }
    paths = result["paths"]

    def added(a: str, b: str) -> float:
        return round(median([x - y for x, y in zip(per_round[a], per_round[b], strict=True)]), 3)

    result["ttfc_added_ms_vs_mitmdump_stream"] = added("llmreel", "mitmdump_stream")
    result["ttfc_added_ms_mitmdump_stream_vs_direct"] = added("mitmdump_stream", "direct")
    result["ttfc_p99_added_ms_vs_mitmdump_stream"] = round(
        paths["llmreel"]["ttfc_ms"]["p99"] - paths["mitmdump_stream"]["ttfc_ms"]["p99"], 3
    )
    result["gap_p99_added_ms_vs_mitmdump_stream"] = round(
        paths["llmreel"]["gap_ms"]["p99"] - paths["mitmdump_stream"]["gap_ms"]["p99"], 3
    )
    return result


# --- memory -----------------------------------------------------------------------------------


def concurrent_rss(proc: Proc, cfg: Config) -> dict[str, Any]:
    """Peak RSS of `proc` while `cfg.concurrent_streams` streams go through it at once."""
    warm = asyncio.run(streams.sequential(proc.port, streams.prompts(3), 0))
    assert warm
    idle = proc.rss_mb()
    peak = [idle]

    def tick() -> None:
        peak[0] = max(peak[0], proc.rss_mb())

    got = asyncio.run(streams.concurrent(
        proc.port, streams.prompts(cfg.concurrent_streams), cfg.concurrent_delay_ms, tick
    ))  # fmt: skip
    time.sleep(0.5)
    return {
        "idle_mb": round(idle, 1),
        "peak_mb": round(peak[0], 1),
        "after_mb": round(proc.rss_mb(), 1),
        "streams": len(got),
        "max_in_flight": streams.max_in_flight(got),
        "stream_seconds_median": round(median([s.ended_at - s.sent_at for s in got]), 2),
    }


def run_memory(procs: Procs, servers: dict[str, Proc], work: Path, cfg: Config) -> dict[str, Any]:
    port = free_port()
    fresh = procs.start("llmreel_memory", llmreel_argv(
        port, servers["upstream"].port, work / "store-memory", work / "confdir"
    ), port)  # fmt: skip
    try:
        llmreel = concurrent_rss(fresh, cfg)
    finally:
        procs.stop(fresh)
    log(f"memory: llmreel {llmreel['idle_mb']} MiB idle, {llmreel['peak_mb']} MiB peak with "
        f"{llmreel['max_in_flight']} streams in flight")  # fmt: skip
    mitm = concurrent_rss(servers["mitmdump_stream"], cfg)
    log(f"memory: mitmdump (streaming) {mitm['peak_mb']} MiB peak")
    return {
        "concurrent_streams": cfg.concurrent_streams,
        "delay_ms": cfg.concurrent_delay_ms,
        "llmreel_fresh": llmreel,
        "mitmdump_stream": mitm,
        "llmreel_after_load_mb": round(servers["llmreel"].rss_mb(), 1),
        "llmreel_passthrough_after_load_mb": round(servers["llmreel_passthrough"].rss_mb(), 1),
        "mitmdump_forward_after_load_mb": round(servers["mitmdump_forward"].rss_mb(), 1),
        "llmreel_w2_supervisor_mb": round(servers["llmreel_w2"].rss_mb(), 1),
        "llmreel_w2_workers_after_load_mb": servers["llmreel_w2"].worker_rss_mb(),
        "llmreel_after_load_anon_mb": round(rss_anon_mb(servers["llmreel"].pid), 1),
        "llmreel_w2_workers_after_load_anon_mb": servers["llmreel_w2"].worker_rss_anon_mb(),
        "llmreel_passthrough_w2_workers_after_load_mb": (
            servers["llmreel_passthrough_w2"].worker_rss_mb()
        ),
    }


# --- profiles ---------------------------------------------------------------------------------


def run_profiles(wrk: Wrk, servers: dict[str, Proc], work: Path, seconds: float) -> dict[str, Any]:
    """py-spy (GIL holder only, non-blocking) on each proxy while wrk loads it."""
    out: dict[str, Any] = {"seconds": seconds, "sampler": "py-spy --gil --nonblocking, 100 Hz"}
    for scenario in throughput.SCENARIOS:
        if scenario.target == "upstream" or scenario.name.endswith("_w2"):
            continue  # (a supervisor proxies nothing: its workers are the one-worker profile)
        server = servers[scenario.target]
        raw = work / f"profile-{scenario.name}.txt"
        spy = profile.start(server.pid, seconds, raw)
        time.sleep(0.3)
        load = wrk.run(server.port, mode=scenario.mode, seconds=seconds + 1,
                       max_requests=int(5000 * seconds))  # fmt: skip
        _, err = spy.communicate(timeout=seconds + 30)
        if spy.returncode != 0 or not raw.exists():
            out[scenario.name] = {"error": err.decode(errors="replace")[-500:]}
            continue
        out[scenario.name] = profile.summarize(raw) | {"rps_while_sampled": round(load.rps, 1)}
        keep = ROOT / "bench" / "out" / "profiles"
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(raw, keep / raw.name)
        log(f"profile {scenario.name}: {out[scenario.name]['samples']} samples, llmreel code "
            f"{out[scenario.name].get('llmreel_code_share', 0):.0%} of GIL time")  # fmt: skip
    return out


# --- run --------------------------------------------------------------------------------------


def _machine() -> dict[str, Any]:
    import lmdb
    import mitmproxy.version

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())  # fmt: skip
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    wrk_version = subprocess.run(["/usr/bin/wrk", "-v"], capture_output=True, text=True)
    import os

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mitmproxy": mitmproxy.version.VERSION,
        "lmdb": f"py-lmdb {lmdb.__version__} (LMDB {'.'.join(map(str, lmdb.version()))})",
        "wrk": " ".join((wrk_version.stdout or wrk_version.stderr).split()[:2]),
    }


def _git() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--", "proxy", "addons")),
    }


def _terminate(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(cfg: Config, skip_store: bool) -> dict[str, Any]:
    started = time.monotonic()
    reniced = raise_priority()
    results: dict[str, Any] = {
        "schema": 1,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": cfg.quick,
        "git": _git(),
        "machine": _machine(),
        "method": {
            "rounds": cfg.rounds,
            "seconds_per_run": cfg.seconds,
            "warmup_seconds": cfg.warmup,
            "wrk_connections": cfg.connections,
            "wrk_threads": 1,
            "reniced": reniced,
            "noisy_run_retries": cfg.retries,
            "noisy_cores": throughput.NOISY_CORES,
            "streams_per_path_per_round": cfg.streams,
            "stream_delay_ms": cfg.stream_delay_ms,
        },
    }
    work = Path(tempfile.mkdtemp(prefix="llmreel-bench-"))
    try:
        with Procs(work) as procs:
            log("starting the fake upstream, 3 bare mitmdumps and 4 llmreels (2 with 2 workers)")
            servers = start_servers(procs, work)
            wrk = Wrk(work, connections=cfg.connections)
            passes = throughput.prerecord_hit_set(servers["llmreel"].port)
            passes = max(passes, throughput.prerecord_hit_set(servers["llmreel_w2"].port))
            log(f"hit set recorded ({passes + 1} pass(es)); throughput: {cfg.rounds} round(s) "
                f"x {len(throughput.SCENARIOS)} paths x {cfg.seconds:g} s")  # fmt: skip
            runs = throughput.run_rounds(wrk, servers, cfg.rounds, cfg.seconds, cfg.warmup,
                                         retries=cfg.retries)  # fmt: skip
            summary, ratios = throughput.aggregate(runs)
            results["throughput"] = summary
            results["ratios"] = ratios
            results["checks"] = throughput.checks(runs)
            log(f"streaming: {cfg.rounds} round(s) x {cfg.streams} streams per path")
            results["streaming"] = run_streaming(servers, cfg)
            results["memory"] = run_memory(procs, servers, work, cfg)
            if cfg.profile_s:
                log(f"profiling each proxy for {cfg.profile_s:g} s under load")
                results["profile"] = run_profiles(wrk, servers, work, cfg.profile_s)
        log("addon cost per request, in-process (CPU time, best of several batches)")
        results["addon_cost"] = hooks.run(
            batch=60 if cfg.quick else 400, repeats=3 if cfg.quick else 5
        )
        cost = results["addon_cost"]
        log(f"addon cost: miss {cost['miss']['loop_us']:.0f} us, hit {cost['hit']['loop_us']:.0f} us "
            f"(hook floor {cost['hook_floor']['loop_us']:.0f} us), passthrough "
            f"{cost['passthrough']['loop_us']:.0f} us per request")  # fmt: skip
        if not skip_store:
            log(f"store at scale: {', '.join(f'{s:,}' for s in cfg.store_scales)} entries")
            results["store"] = storebench.run(
                work / "store-scale", cfg.store_scales, cfg.lookups, cfg.inserts
            )
            log("explained misses: 10,000 recordings, before and after the endpoint index")
            results["misses"] = missbench.run(
                work / "misses",
                10_000,
                misses=20 if cfg.quick else 40,
                before=3 if cfg.quick else 5,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["duration_s"] = round(time.monotonic() - started, 1)
    report.headline(results)
    return results


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    cfg = Config.from_args(args)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    results_path, md_path, png_path = _outputs(args)
    try:
        results = run(cfg, args.skip_store)
    except KeyboardInterrupt:
        log("interrupted; every server was stopped")
        return 130
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    report.plot(results, png_path)
    report.markdown(results, md_path, png_path)
    log(f"wrote {results_path}, {md_path} and {png_path} in {results['duration_s']:g} s")
    print(report.table(results))
    return 0
