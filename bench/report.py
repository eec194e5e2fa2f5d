"""Headline figures and targets, the markdown report and the plot, all from results.json."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from . import missbench
from .throughput import SCENARIOS

NOTES_BEGIN = "<!-- notes: kept by bench/run -->"
NOTES_END = "<!-- /notes -->"

# (key, what, target, ">=" or "<=")
TARGETS = [
    ("hit_rps_ratio_vs_mitmdump_hook", "hit-path throughput vs bare mitmdump hook", 0.9, ">="),
    ("miss_rps_ratio_vs_mitmdump_forward", "miss-path throughput vs bare mitmdump forwarding", 0.9, ">="),
    ("hit_w2_rps_ratio_vs_mitmdump_hook", "hit-path throughput, 2 workers, vs bare mitmdump hook", 1.4, ">="),
    ("miss_w2_rps_ratio_vs_mitmdump_forward", "miss-path throughput, 2 workers, vs bare mitmdump forwarding", 1.05, ">="),
    ("rss_mb_per_worker", "RSS per llmreel process after the throughput rounds (MiB)", 150.0, "<="),
    ("rss_anon_mb_per_worker", "of which the process's own (RssAnon, without LMDB's mapped pages)", 150.0, "<="),
    ("ttfc_added_ms_vs_mitmdump_stream", "TTFC added vs bare mitmdump streaming (ms)", 2.0, "<="),
    ("lookup_p99_ms_at_1m", "hit lookup p99 at 1M entries (ms)", 1.0, "<="),
    ("rss_mb_100_streams", "RSS with 100 concurrent streams (MiB)", 250.0, "<="),
]  # fmt: skip


def headline(results: dict[str, Any]) -> None:
    """Add the top-level keys the issue asks for, and whether each target is met."""
    ratios = results.get("ratios", {})
    for key in ("hit_rps_ratio_vs_mitmdump_hook", "miss_rps_ratio_vs_mitmdump_forward",
                "passthrough_rps_ratio_vs_mitmdump_forward", "hit_w2_rps_ratio_vs_mitmdump_hook",
                "miss_w2_rps_ratio_vs_mitmdump_forward",
                "passthrough_w2_rps_ratio_vs_mitmdump_forward"):  # fmt: skip
        results[key] = ratios.get(key, {}).get("median")
    results["ttfc_added_ms_vs_mitmdump_stream"] = results.get("streaming", {}).get(
        "ttfc_added_ms_vs_mitmdump_stream"
    )
    store = results.get("store") or []
    at_1m = [s for s in store if s["entries"] >= 1_000_000]
    results["lookup_p99_ms_at_1m"] = at_1m[0]["lookup_hit"]["p99"] if at_1m else None
    if store:
        results["lookup_p99_ms_at_largest"] = store[-1]["lookup_hit"]["p99"]
        results["store_largest_entries"] = store[-1]["entries"]
    results["rss_mb_100_streams"] = (
        results.get("memory", {}).get("llmreel_fresh", {}).get("peak_mb")
    )
    memory = results.get("memory", {})
    per_process = [
        memory.get("llmreel_after_load_mb"),
        *memory.get("llmreel_w2_workers_after_load_mb", []),
    ]
    per_process = [m for m in per_process if m is not None]
    results["rss_mb_per_worker"] = max(per_process) if per_process else None
    anon = [
        memory.get("llmreel_after_load_anon_mb"),
        *memory.get("llmreel_w2_workers_after_load_anon_mb", []),
    ]
    anon = [m for m in anon if m is not None]
    results["rss_anon_mb_per_worker"] = max(anon) if anon else None
    targets = {}
    for key, what, target, op in TARGETS:
        value = results.get(key)
        met = None if value is None else (value >= target if op == ">=" else value <= target)
        targets[key] = {"what": what, "target": f"{op} {target:g}", "value": value, "met": met}
    results["targets"] = targets


# --- text -------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _met(met: bool | None) -> str:
    return {True: "✅ met", False: "❌ not met", None: "not measured"}[met]


def _floor_of(name: str) -> tuple[str, str] | None:
    return {
        "llmreel_hit": ("mitmdump_hook", "hit_rps_ratio_vs_mitmdump_hook"),
        "llmreel_miss": ("mitmdump_forward", "miss_rps_ratio_vs_mitmdump_forward"),
        "llmreel_passthrough": ("mitmdump_forward", "passthrough_rps_ratio_vs_mitmdump_forward"),
        "llmreel_hit_w2": ("mitmdump_hook", "hit_w2_rps_ratio_vs_mitmdump_hook"),
        "llmreel_miss_w2": ("mitmdump_forward", "miss_w2_rps_ratio_vs_mitmdump_forward"),
        "llmreel_passthrough_w2": (
            "mitmdump_forward",
            "passthrough_w2_rps_ratio_vs_mitmdump_forward",
        ),
        "mitmdump_forward": ("direct", "mitmdump_forward_rps_ratio_vs_direct"),
    }.get(name)


def targets_table(results: dict[str, Any]) -> list[str]:
    lines = ["| target | goal | measured | |", "|---|---|---|---|"]
    for t in results["targets"].values():
        lines.append(f"| {t['what']} | {t['target']} | {_fmt(t['value'], 3)} | {_met(t['met'])} |")
    return lines


def throughput_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| path | req/s (median, min–max) | p50 ms | p99 ms | proxy CPU ms/req | ratio to floor |",
        "|---|---|---|---|---|---|",
    ]
    summary = results["throughput"]
    for s in SCENARIOS:
        row = summary[s.name]
        floor = _floor_of(s.name)
        ratio = "–"
        if floor is not None:
            r = results["ratios"][floor[1]]
            ratio = f"{r['median']:.2f}× {floor[0]} (rounds: {', '.join(f'{x:.2f}' for x in r['per_round'])})"
        lines.append(
            f"| {s.label} | {row['rps_median']:,.0f} ({row['rps_min']:,.0f}–{row['rps_max']:,.0f}) "
            f"| {row['p50_ms_median']:.2f} | {row['p99_ms_median']:.2f} "
            f"| {_fmt(row['proxy_cpu_ms_per_request_median'])} | {ratio} |"
        )
    return lines


def streaming_table(results: dict[str, Any]) -> list[str]:
    st = results["streaming"]
    lines = [
        f"| path | TTFC p50 ms | TTFC p99 ms | gap p50 ms | gap p99 ms (nominal {st['delay_ms']}) | streams |",
        "|---|---|---|---|---|---|",
    ]
    for path, row in st["paths"].items():
        gap = row["gap_ms"] or {}
        lines.append(
            f"| {path} | {row['ttfc_ms']['p50']:.2f} | {row['ttfc_ms']['p99']:.2f} "
            f"| {_fmt(gap.get('p50'))} | {_fmt(gap.get('p99'))} | {row['streams']} |"
        )
    return lines


def store_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| entries | lookup p50 ms | lookup p99 ms | absent-key p99 ms | insert p50 ms | insert p99 ms "
        "| bulk insert/s | size MiB | bytes/entry |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results.get("store") or []:
        lines.append(
            f"| {row['entries']:,} | {row['lookup_hit']['p50']:.4f} | {row['lookup_hit']['p99']:.4f} "
            f"| {row['lookup_miss']['p99']:.4f} | {row['insert']['p50']:.2f} | {row['insert']['p99']:.2f} "
            f"| {_fmt(row['bulk_insert_per_s'])} | {row['size_bytes'] / 2**20:,.0f} "
            f"| {row['bytes_per_entry']:,} |"
        )
    return lines


def miss_lines(results: dict[str, Any]) -> list[str]:
    misses = results.get("misses")
    if not misses:
        return ["Skipped in this run."]
    return [
        f"Time to explain one miss (find the closest recording and diff it), median, with "
        f"{misses['entries']:,} recordings of one endpoint in one namespace (`bench/missbench.py`). "
        "*Before*: decode every recording of the namespace; *after*: `Store.candidates`, which "
        "ranks the endpoint's 128-byte sketches and decodes the best 32. *As close*: misses whose "
        "explanation lists no more changes than the full scan's.",
        "",
        *missbench.table(misses),
    ]


def memory_lines(results: dict[str, Any]) -> list[str]:
    m = results["memory"]
    fresh, mitm = m["llmreel_fresh"], m["mitmdump_stream"]
    return [
        "| process | idle MiB | peak MiB with streams | streams in flight at once |",
        "|---|---|---|---|",
        f"| llmreel (fresh, auto mode, recording) | {fresh['idle_mb']} | {fresh['peak_mb']} | {fresh['max_in_flight']} |",
        f"| bare mitmdump, streaming | {mitm['idle_mb']} | {mitm['peak_mb']} | {mitm['max_in_flight']} |",
        "",
        f"After the throughput rounds: llmreel (auto) {m['llmreel_after_load_mb']} MiB, llmreel "
        f"(passthrough) {m['llmreel_passthrough_after_load_mb']} MiB, bare mitmdump forwarding "
        f"{m['mitmdump_forward_after_load_mb']} MiB.",
        *(
            [
                "",
                f"With `--workers 2`: the supervisor {m['llmreel_w2_supervisor_mb']} MiB; each "
                f"worker after the rounds {', '.join(map(str, m['llmreel_w2_workers_after_load_mb']))}"
                f" MiB (auto), {', '.join(map(str, m['llmreel_passthrough_w2_workers_after_load_mb']))}"
                " MiB (passthrough).",
            ]
            if "llmreel_w2_workers_after_load_mb" in m
            else []
        ),
    ]


def profile_lines(results: dict[str, Any]) -> list[str]:
    prof = results.get("profile")
    if not prof:
        return ["Not profiled in this run (`bench/run` profiles by default; `--quick` does not)."]
    lines = [
        f"Sampler: {prof['sampler']}, {prof['seconds']:g} s per path under the same wrk load. "
        "Shares are of samples of the thread holding the GIL, i.e. of the event loop's CPU.",
        "",
        "| path | samples | llmreel code | top llmreel functions (inclusive share) |",
        "|---|---|---|---|",
    ]
    for name, p in prof.items():
        if not isinstance(p, dict) or "samples" not in p:
            continue
        top = ", ".join(
            f"`{f['function']}` {f['share']:.0%}" for f in p.get("top_llmreel_inclusive", [])[:6]
        )
        share = p.get("llmreel_code_share")
        lines.append(
            f"| {name} | {p['samples']} | {_fmt(share and share * 100, 0)}% | {top or '–'} |"
        )
    return lines


def addon_lines(results: dict[str, Any]) -> list[str]:
    cost = results.get("addon_cost")
    if not cost:
        return ["Not measured in this run."]
    tp = results.get("throughput", {})
    fwd_cpu = tp.get("mitmdump_forward", {}).get("proxy_cpu_ms_per_request_median")
    lines = [
        f"The addon's hooks driven in-process with mitmproxy's test flows (same bodies; the fake "
        f"upstream's real reply bytes), {cost['batch']} requests per batch, best of "
        f"{cost['repeats']} batches, CPU time. This is what llmreel adds on top of mitmproxy's own "
        "work per request, measured without the noise of the load test.",
        "",
        "| path | event loop µs/request | + store writer thread µs/request |",
        "|---|---|---|",
    ]
    for name in ("miss", "miss_stream", "hit", "passthrough"):
        lines.append(
            f"| {name} | {cost[name]['loop_us']:.0f} | {cost[name]['with_commit_us']:.0f} |"
        )
    lines.append(
        f"| floor: bench/addons/hook.py (Response.make) | {cost['hook_floor']['loop_us']:.0f} | – |"
    )
    if fwd_cpu:
        lines += [
            "",
            f"For scale: bare mitmdump forwarding used {fwd_cpu:.2f} ms of CPU per request in "
            "the load test above.",
        ]
    for key, title in (("profile_miss", "miss"), ("profile_hit", "hit")):
        prof = cost.get(key, {})
        rows = prof.get("llmreel_cumulative", [])[:10]
        if rows:
            lines += [
                "",
                f"cProfile, {title} path, llmreel functions by cumulative share of the hooks' time "
                "(Python 3.12's cProfile sees every thread: `LmdbStore._write_batch` is the writer "
                "thread, mostly waiting on the commit's fsync without the GIL):",
                "",
                "| function | where | calls/request | cumulative | self |",
                "|---|---|---|---|---|",
            ]
            lines += [
                f"| `{r['function']}` | {r['where']} | {r['calls_per_request']:g} | "
                f"{r['cum_share']:.1%} | {r['self_share']:.1%} |"
                for r in rows
            ]
    return lines


def table(results: dict[str, Any]) -> str:
    return "\n".join(targets_table(results) + [""] + throughput_table(results))


def _background(results: dict[str, Any]) -> str:
    cores = sorted(r["background_cpu_cores"] for rows in results["throughput"].values()
                   for r in rows["rounds"])  # fmt: skip
    if not cores:
        return ""
    mid = cores[len(cores) // 2]
    return (
        f" During these runs other jobs on the machine used a median of {mid:.2f} of its "
        f"{results['machine']['cores']} cores (max {cores[-1]:.2f}): treat single numbers "
        "with care."
        if mid > 0.1
        else ""
    )


def _old_notes(path: Path) -> str:
    if not path.exists():
        return ""
    match = re.search(
        re.escape(NOTES_BEGIN) + r"\n(.*?)" + re.escape(NOTES_END), path.read_text(), re.S
    )
    return match.group(1) if match else ""


def markdown(results: dict[str, Any], path: Path, png: Path) -> None:
    git, mach, method = results["git"], results["machine"], results["method"]
    notes = _old_notes(path) or "_Findings and follow-ups go here; bench/run keeps this section._\n"
    rel_png = png.name if png.parent == path.parent else str(png)
    parts = [
        "# Benchmarks",
        "",
        f"Generated by `bench/run{' --quick' if results['quick'] else ''}` on {results['date']} at commit "
        f"`{git['commit'][:10]}`{' (with local changes in proxy/ or addons/)' if git['dirty'] else ''}, "
        f"in {results['duration_s']:g} s. Machine: {mach['cpu']}, {mach['cores']} cores, "
        f"{mach['memory_gb']} GiB; Python {mach['python']}, mitmproxy {mach['mitmproxy']}, "
        f"{mach['lmdb']}, {mach['wrk']}. Absolute numbers vary between machines; the ratios, "
        "measured side by side in one run, are what matter.",
        "",
        f"![benchmarks]({rel_png})",
        "",
        "## Targets",
        "",
        *targets_table(results),
        "",
        "## Throughput",
        "",
        f"wrk, {method['wrk_connections']} connections, {method['seconds_per_run']:g} s per run, "
        f"{method['rounds']} interleaved round(s); medians over rounds. Ratios are the median of the "
        "per-round ratios (each pair measured minutes apart at most). *Proxy CPU ms/req* is the "
        "CPU time of the proxy process per request: it is much less sensitive to other load on "
        "the machine than req/s." + _background(results),
        "",
        *throughput_table(results),
        "",
        "## Streaming",
        "",
        f"Sequential streams over one keep-alive connection per path, the fake upstream spacing "
        f"SSE events by {results['streaming']['delay_ms']} ms; times taken by the client when each "
        "event's last byte arrives. TTFC runs from the request being written to the first complete "
        "event. *llmreel_replay* replays llmreel's recordings of the same prompts (hits). "
        f"TTFC added by llmreel vs bare mitmdump streaming (median of per-round differences): "
        f"**{results['streaming']['ttfc_added_ms_vs_mitmdump_stream']:.2f} ms**; "
        f"bare mitmdump vs direct: {results['streaming']['ttfc_added_ms_mitmdump_stream_vs_direct']:.2f} ms.",
        "",
        *streaming_table(results),
        "",
        "## Memory",
        "",
        f"{results['memory']['concurrent_streams']} concurrent streams (one connection each, events "
        f"{results['memory']['delay_ms']} ms apart), RSS sampled every 20 ms.",
        "",
        *memory_lines(results),
        "",
        "## Addon cost per request",
        "",
        *addon_lines(results),
        "",
        "## Store at scale",
        "",
        "`proxy.store.LmdbStore` filled with synthetic recordings (`proxy.records.pack` of a ~1.7 KB "
        "chat request and a ~2 KB response; 30% SSE streams), SHA-256 keys, bulk-loaded with "
        "`write_raw` batches of 10k. Lookups: `store.get` of random present keys (and of absent "
        "keys, as on every miss), warm page cache. Inserts: `store.put`, one committed (fsynced) "
        "transaction each.",
        "",
        *(store_table(results) if results.get("store") else ["Skipped in this run."]),
        "",
        "## Misses explained",
        "",
        *miss_lines(results),
        "",
        "## Profile",
        "",
        *profile_lines(results),
        "",
        "## Notes",
        "",
        NOTES_BEGIN,
        notes.rstrip("\n"),
        NOTES_END,
        "",
        "## Method",
        "",
        "- One run starts, on 127.0.0.1 only: the project's fake upstream (`tests/fakeupstream.py`, "
        "plain HTTP, in its own process), three bare `mitmdump`s (forwarding; answering from a "
        "10-line `request` hook, `bench/addons/hook.py`; streaming on, `bench/addons/stream.py`) "
        "and two `llmreel serve` processes (auto; passthrough) exactly as a user runs them. Every "
        "proxy is a plain-HTTP reverse proxy to the same upstream (`--mode reverse:...` / "
        "`--reverse ...`), with `connection_strategy=lazy`, so wrk speaks HTTP/1.1 to all of them "
        "the same way. Bare mitmdumps run with `-q` (llmreel has no per-flow output either).",
        "- Requests are realistic chat-completions POSTs (~1.7 KB: system prompt, history, two "
        "tools); the upstream answers ~3.4 KB (2 KB of text). The miss path and passthrough send a "
        "new prompt on every request (`bench/load.lua`); the hit path cycles through 200 prompts "
        "recorded beforehand, and the hook answers a body of the same size. Every run checks "
        "statuses, and that hits were hits and misses misses.",
        "- Throughput runs are interleaved (the order rotates each round) and repeated; the "
        "machine has 2 cores shared by wrk, the proxy and the upstream, and other jobs may run on "
        "it, so each run also records the CPU used by everything else (`background_cpu_cores` in "
        "results.json). The bench renices itself and its servers to -10 when it can.",
        "- The direct floor is bounded by the fake upstream (a threaded Python server), not by "
        "the network.",
        "",
        "## How to run",
        "",
        "```sh",
        "bench/run            # full run (~10 min): writes bench/results.json, docs/benchmarks.md and .png",
        "bench/run --quick    # under a minute: writes bench/out/quick/",
        "bench/run --no-profile --skip-store --rounds 5   # just the proxies, more rounds",
        "```",
        "",
        "Needs `wrk` (`apt-get install wrk`) and the dev dependencies (`uv sync`: matplotlib, py-spy). "
        "Raw py-spy samples are kept in `bench/out/profiles/` (flamegraph.pl input).",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))


# --- plot -------------------------------------------------------------------------------------


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    fig.suptitle(
        f"llmreel vs its floors — {results['date'][:10]}, commit {results['git']['commit'][:8]}"
    )
    floor_color, ours = "#9aa5b1", "#d1495b"

    # Throughput.
    ax = axes[0][0]
    names = [s.name for s in SCENARIOS]
    tp = results["throughput"]
    med = [tp[n]["rps_median"] for n in names]
    err = [[m - tp[n]["rps_min"] for n, m in zip(names, med, strict=True)],
           [tp[n]["rps_max"] - m for n, m in zip(names, med, strict=True)]]  # fmt: skip
    colors = [ours if n.startswith("llmreel") else floor_color for n in names]
    ax.bar(range(len(names)), med, yerr=err, color=colors, capsize=3)
    ax.set_xticks(
        range(len(names)), [s.label for s in SCENARIOS], rotation=30, ha="right", fontsize=8
    )
    ax.set_ylabel("requests/s (median, min–max)")
    ax.set_title("Throughput (wrk, 10 connections)")

    # Ratios.
    ax = axes[0][1]
    keys = ["hit_rps_ratio_vs_mitmdump_hook", "miss_rps_ratio_vs_mitmdump_forward",
            "passthrough_rps_ratio_vs_mitmdump_forward"]  # fmt: skip
    labels = ["hit / hook", "miss / forward", "passthrough / forward"]
    vals = [results["ratios"][k]["median"] for k in keys]
    cpu = [1 / results["ratios"][k].get("cpu_per_request_ratio", float("nan")) for k in keys]
    x = range(len(keys))
    ax.bar([i - 0.2 for i in x], vals, width=0.4, color=ours, label="req/s ratio")
    ax.bar(
        [i + 0.2 for i in x],
        cpu,
        width=0.4,
        color="#edae49",
        label="floor CPU/req ÷ llmreel CPU/req",
    )
    ax.axhline(0.9, color="black", linestyle="--", linewidth=1, label="target 0.9")
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylim(0, max(1.2, *[v * 1.1 for v in vals + cpu if v == v]))
    ax.set_title("llmreel relative to its floor (1.0 = no overhead)")
    ax.legend(fontsize=7, loc="upper right")

    # Request latency.
    ax = axes[0][2]
    p50 = [tp[n]["p50_ms_median"] for n in names]
    p99 = [tp[n]["p99_ms_median"] for n in names]
    ax.bar([i - 0.2 for i in range(len(names))], p50, width=0.4, color=colors, label="p50")
    ax.bar(
        [i + 0.2 for i in range(len(names))], p99, width=0.4, color=colors, alpha=0.5, label="p99"
    )
    ax.set_xticks(
        range(len(names)), [s.label for s in SCENARIOS], rotation=30, ha="right", fontsize=8
    )
    ax.set_ylabel("ms under load (p50 solid, p99 light)")
    ax.set_title("Request latency under load")

    # Streaming TTFC.
    ax = axes[1][0]
    st = results["streaming"]["paths"]
    spaths = list(st)
    ax.bar([i - 0.2 for i in range(len(spaths))], [st[p]["ttfc_ms"]["p50"] for p in spaths], width=0.4,
           color=[ours if p.startswith("llmreel") else floor_color for p in spaths], label="p50")  # fmt: skip
    ax.bar([i + 0.2 for i in range(len(spaths))], [st[p]["ttfc_ms"]["p99"] for p in spaths], width=0.4,
           color=[ours if p.startswith("llmreel") else floor_color for p in spaths], alpha=0.5, label="p99")  # fmt: skip
    ax.set_xticks(range(len(spaths)), spaths, fontsize=8)
    ax.set_ylabel("ms (p50 solid, p99 light)")
    ax.set_title(
        f"Time to first chunk ({results['streaming']['ttfc_added_ms_vs_mitmdump_stream']:+.2f} ms vs mitmdump)"
    )

    # Store.
    ax = axes[1][1]
    store = results.get("store") or []
    if store:
        n = [s["entries"] for s in store]
        ax.plot(n, [s["lookup_hit"]["p50"] for s in store], "o-", color=ours, label="lookup p50")
        ax.plot(n, [s["lookup_hit"]["p99"] for s in store], "o--", color=ours, label="lookup p99")
        ax.plot(
            n,
            [s["insert"]["p50"] for s in store],
            "s-",
            color="#00798c",
            label="insert p50 (fsync)",
        )
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="lookup p99 target")
        ax.set_xscale("log")
        ax.set_yscale("log")
        for s in store:
            ax.annotate(f"{s['size_bytes'] / 2**20:,.0f} MiB", (s["entries"], s["lookup_hit"]["p99"]),
                        textcoords="offset points", xytext=(0, 8), fontsize=7, ha="center")  # fmt: skip
        ax.set_xlabel("recordings in the store")
        ax.set_ylabel("ms")
        ax.legend(fontsize=7)
    ax.set_title("LMDB store at scale")

    # Memory.
    ax = axes[1][2]
    m = results["memory"]
    bars = [("llmreel idle", m["llmreel_fresh"]["idle_mb"], ours),
            (f"llmreel {m['concurrent_streams']} streams", m["llmreel_fresh"]["peak_mb"], ours),
            ("mitmdump idle", m["mitmdump_stream"]["idle_mb"], floor_color),
            (f"mitmdump {m['concurrent_streams']} streams", m["mitmdump_stream"]["peak_mb"], floor_color)]  # fmt: skip
    ax.bar(range(len(bars)), [b[1] for b in bars], color=[b[2] for b in bars])
    ax.axhline(250, color="black", linestyle="--", linewidth=1, label="target 250 MiB")
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("RSS MiB")
    ax.set_title("Memory")
    ax.legend(fontsize=7)

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
