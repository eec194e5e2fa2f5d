"""A bounded soak of `llmreel serve`: mixed LLM traffic for a fixed time, then an audit.

Everything runs on 127.0.0.1: the fake HTTPS upstream (`tests.fakeupstream`) in this process,
the proxy as a real `llmreel serve` subprocess (so its RSS can be read from /proc), and a fixed
number of client threads. The traffic mixes OpenAI, Anthropic and Gemini calls, JSON and
streamed, new prompts (misses) and repeats (hits), plus faults the upstream or the client cause:
error statuses, streams cut by the upstream, streams abandoned by the client.

At the end the proxy is stopped with SIGTERM and its store is audited: every completed miss must
be there, intact, under its own key; no entry may hold half a response, and no stream the
upstream cut may be there at all. The exit code is 1 when a record was lost, an entry is unsound,
the proxy caused an error, or its metrics miscounted. See docs/reliability.md.

    uv run python -m bench.soak --duration 60 --json soak.json
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import ssl
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if __package__ in (None, ""):  # `python bench/soak.py`: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmreel.cli.clientenv import write_bundle
from llmreel.core.keys import request_digest
from llmreel.providers import classify, summarize
from llmreel.storage.lmdbstore import LmdbStore, entry_key
from llmreel.storage.records import RecordError, unpack
from tests.fakeupstream import FakeUpstream

if TYPE_CHECKING:
    from bench.procs import Proc

#: Each kind is (path, streamed); `llm_body` builds the matching request body.
KINDS: dict[str, tuple[str, bool]] = {
    "openai": ("/v1/chat/completions", False),
    "openai-stream": ("/v1/chat/completions", True),
    "anthropic": ("/v1/messages", False),
    "anthropic-stream": ("/v1/messages", True),
    "gemini": ("/v1beta/models/gemini-2.5-flash:generateContent", False),
    "gemini-stream": ("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", True),
}
STREAM_KINDS = [kind for kind, (_, streamed) in KINDS.items() if streamed]
FAULT_STATUSES = (429, 500, 503)
REQUEST_TIMEOUT_S = 30.0


def llm_body(kind: str, prompt: str) -> dict[str, Any]:
    """A request body of `kind` whose last user message is `prompt`."""
    streamed = KINDS[kind][1]
    if kind.startswith("gemini"):
        return {"contents": [{"role": "user", "parts": [{"text": prompt}]}]}
    body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}]}
    if kind.startswith("anthropic"):
        body |= {"model": "claude-sonnet-4-6", "max_tokens": 64}
    else:
        body["model"] = "gpt-4o-mini"
    if streamed:
        body["stream"] = True
    return body


@dataclass
class Tally:
    """What the clients saw. Shared by the worker threads; mutate only under `lock`."""

    sent: int = 0
    answered: int = 0
    """Requests that got at least a response head (so the proxy accounted for them)."""
    outcomes: Counter[str] = field(default_factory=Counter)
    proxy_errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    missed_keys: set[str] = field(default_factory=set)
    """Keys of completed misses: each must be in the store at the end."""
    cut_keys: set[str] = field(default_factory=set)
    """Keys of streams the upstream cut: none may be in the store."""
    done_prompts: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def proxy_error(self, what: str, detail: str) -> None:
        with self.lock:
            self.proxy_errors[what] += 1
            if len(self.error_samples) < 20:
                self.error_samples.append(f"{what}: {detail}"[:300])


@dataclass
class Worker:
    """One client: its own connection through the proxy, its own random stream of calls."""

    client: httpx.Client
    upstream: str
    tally: Tally
    rng: random.Random
    fault_rate: float
    repeat_rate: float
    prefix: str

    def run(self, deadline: float) -> None:
        try:
            self._loop(deadline)
        except Exception as exc:  # a bug here must fail the soak, not thin out the traffic
            self.tally.proxy_error("worker_crashed", repr(exc))
            raise

    def _loop(self, deadline: float) -> None:
        serial = 0
        while time.monotonic() < deadline:
            serial += 1
            roll = self.rng.random()
            if roll < self.fault_rate:
                self._fault(f"{self.prefix}-{serial}")
            elif roll < self.fault_rate + self.repeat_rate and self.tally.done_prompts:
                with self.tally.lock:
                    kind, prompt = self.rng.choice(self.tally.done_prompts)
                self._call(kind, prompt, expect_hit=True)
            else:
                kind = self.rng.choice(list(KINDS))
                self._call(
                    kind,
                    f"soak {self.prefix}-{serial}: tell me about the number {serial}",
                    expect_hit=False,
                )

    def _send(
        self, kind: str, prompt: str, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        path = KINDS[kind][0]
        with self.tally.lock:
            self.tally.sent += 1
        request = self.client.build_request(
            "POST", self.upstream + path, json=llm_body(kind, prompt), headers=headers
        )
        response = self.client.send(request, stream=True)
        with self.tally.lock:
            self.tally.answered += 1
        return response

    def _call(self, kind: str, prompt: str, *, expect_hit: bool) -> None:
        try:
            response = self._send(kind, prompt)
            try:
                response.read()
            finally:
                response.close()
        except httpx.HTTPError as exc:
            self.tally.proxy_error("exception", f"{kind} {type(exc).__name__}: {exc}")
            return
        cache = response.headers.get("llmreel-cache", "")
        if response.status_code != 200 or cache not in ("hit", "miss"):
            self.tally.proxy_error("bad_reply", f"{kind} {response.status_code} cache={cache!r}")
            return
        if expect_hit and cache != "hit":
            # The first call completed, so its recording was committed or still in flight:
            # either way single flight serves it. A miss means it was lost.
            self.tally.proxy_error("repeat_missed", f"{kind} key={response.headers['llmreel-key']}")
            return
        with self.tally.lock:
            self.tally.outcomes[cache] += 1
            if cache == "miss":
                self.tally.missed_keys.add(response.headers["llmreel-key"])
                self.tally.done_prompts.append((kind, prompt))

    def _fault(self, tag: str) -> None:
        fault = self.rng.choice(("status", "upstream_cut", "client_abort"))
        kind = self.rng.choice(STREAM_KINDS)
        prompt = f"soak fault {tag}"
        headers = {}
        if fault == "status":
            headers["x-fake-status"] = str(self.rng.choice(FAULT_STATUSES))
        elif fault == "upstream_cut":
            headers["x-fake-cut-after"] = "2"
        else:
            headers["x-fake-delay-ms"] = "100"  # the client hangs up long before the end
        try:
            response = self._send(kind, prompt, headers)
        except httpx.HTTPError as exc:
            self.tally.proxy_error("exception", f"{fault} {type(exc).__name__}: {exc}")
            return
        key = response.headers.get("llmreel-key", "")
        try:
            if fault == "status":
                response.read()
                if response.status_code != int(headers["x-fake-status"]):
                    self.tally.proxy_error("status_changed", f"{headers} -> {response.status_code}")
                    return
            elif fault == "upstream_cut":
                try:
                    response.read()
                except httpx.HTTPError:
                    pass  # the upstream's doing: the client must see the cut, and does
            else:
                next(response.iter_raw(), None)  # one chunk, then hang up
        except httpx.HTTPError as exc:
            self.tally.proxy_error("exception", f"{fault} {type(exc).__name__}: {exc}")
            return
        finally:
            response.close()
        with self.tally.lock:
            self.tally.outcomes[fault] += 1
            if fault == "upstream_cut":
                self.tally.cut_keys.add(key)


@dataclass
class StoreAudit:
    entries: int = 0
    corrupt: list[str] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)


def entry_problem(db_key: bytes, value: bytes) -> tuple[str | None, str | None]:
    """(key, None) for a sound entry; (key or None, what is wrong) otherwise.

    Sound: it unpacks, sits under the key its own request digests to, and holds a complete
    response (a stream that reached its end), never half of one.
    """
    try:
        rec = unpack(value)
    except RecordError as exc:
        return None, f"{db_key!r}: {exc}"
    if request_digest(rec.request) != rec.key or entry_key(rec.namespace, rec.key) != db_key:
        return rec.key, f"{rec.key}: stored under {db_key!r}, not under its request's digest"
    req = rec.request
    endpoint = classify(req["method"], f"{req['host']}:{req['port']}", req["path"])
    if endpoint is None or not summarize(endpoint, rec.body, rec.content_type()).complete:
        return rec.key, f"{rec.key}: the recorded response is incomplete"
    return rec.key, None


def audit_store(path: Path) -> StoreAudit:
    audit = StoreAudit()
    with LmdbStore(path, create=False) as store:
        for db_key, value in store.iter_raw(b"entries"):
            audit.entries += 1
            key, problem = entry_problem(db_key, value)
            if key is not None:
                audit.keys.add(key)
            if problem is not None:
                audit.corrupt.append(problem)
    return audit


def scrape_requests_total(metrics_port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(r"^llmreel_requests_total\{[^}]*\} (\S+)$", text, re.M))


class RssSampler(threading.Thread):
    """Samples the proxy's RSS every second, for the peak."""

    def __init__(self, proc: Proc) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.peak_mb = proc.rss_mb()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(1.0):
            try:
                self.peak_mb = max(self.peak_mb, self.proc.rss_mb())
            except (OSError, RuntimeError):
                return


def progress(tally: Tally, started: float, proc: Proc, every: float, deadline: float) -> None:
    from bench.procs import log

    while (now := time.monotonic()) < deadline:
        time.sleep(min(every, max(deadline - now, 0.01)))
        with tally.lock:
            served, errors = tally.answered, sum(tally.proxy_errors.values())
        elapsed = time.monotonic() - started
        log(
            f"{elapsed:5.0f}s  served {served}  ({served / elapsed:.0f}/s)  proxy errors {errors}  "
            f"RSS {proc.rss_mb():.0f} MiB"
        )


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and its two parts: anonymous (the heap: leaks show here) and file-backed (mostly
    the LMDB pages the proxy has mapped, which follow the store's size), in MiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile"):
            found[name] = int(value.split()[0]) / 1024
    return found


@dataclass
class ProxyRun:
    """What the soak measured on the proxy process itself."""

    memory_start: dict[str, float] = field(default_factory=dict)
    memory_warm: dict[str, float] = field(default_factory=dict)
    memory_end: dict[str, float] = field(default_factory=dict)
    rss_peak: float = 0.0
    accounted: float = 0.0
    exit_code: int | None = None
    tracebacks: int = 0
    hung_clients: int = 0
    elapsed: float = 0.0


def drive(
    args: argparse.Namespace, proxy: str, bundle: Path, upstream: str, tally: Tally, proc: Proc
) -> ProxyRun:
    """Run the client threads until the deadline; sample the proxy's RSS meanwhile."""
    run = ProxyRun(memory_start=memory_mb(proc.pid))
    sampler = RssSampler(proc)
    sampler.start()
    context = ssl.create_default_context(cafile=str(bundle))
    clients = [
        httpx.Client(proxy=proxy, verify=context, timeout=REQUEST_TIMEOUT_S)
        for _ in range(args.concurrency)
    ]
    started = time.monotonic()
    deadline = started + args.duration
    workers = [
        Worker(
            client,
            upstream,
            tally,
            random.Random(f"{args.seed}-{i}"),
            args.fault_rate,
            args.repeat_rate,
            f"w{i}",
        )
        for i, client in enumerate(clients)
    ]
    threads = [threading.Thread(target=w.run, args=(deadline,), daemon=True) for w in workers]
    ticker = (tally, started, proc, args.progress, deadline)
    threads.append(threading.Thread(target=progress, args=ticker, daemon=True))
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        if not run.memory_warm and time.monotonic() > started + args.duration * 0.1:
            run.memory_warm = memory_mb(proc.pid)  # connection pools and caches have filled
        time.sleep(0.1)
        if time.monotonic() > deadline + REQUEST_TIMEOUT_S + 5:
            break  # a request hangs past its own timeout: report it, don't wait forever
    run.elapsed = time.monotonic() - started
    run.hung_clients = sum(t.is_alive() for t in threads)
    for client in clients:
        client.close()
    run.memory_end = memory_mb(proc.pid)
    run.memory_warm = run.memory_warm or run.memory_start
    sampler.stopped.set()
    run.rss_peak = max(sampler.peak_mb, run.memory_end["VmRSS"])
    return run


def soak(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    # Imported here, not at the top: the tests reuse this module's traffic model and audit.
    from bench.procs import BIN, Procs, free_port

    store, confdir = workdir / "store", workdir / "confdir"
    bundle = write_bundle(str(confdir))
    metrics_port, proxy_port = free_port(), free_port()
    tally = Tally()
    with FakeUpstream(tls=True) as upstream, Procs(workdir) as procs:
        argv = [
            str(BIN / "llmreel"), "serve", "-q", "--port", str(proxy_port), "--store", str(store),
            "--confdir", str(confdir), "--metrics-port", str(metrics_port),
            "--set", f"ssl_verify_upstream_trusted_ca={upstream.cert_path}",
        ]  # fmt: skip
        proc = procs.start("llmreel", argv, proxy_port)
        run = drive(args, f"http://127.0.0.1:{proxy_port}", bundle, upstream.url, tally, proc)
        time.sleep(0.5)  # let the proxy account for the last abandoned streams
        run.accounted = scrape_requests_total(metrics_port)
        procs.stop(proc)  # SIGTERM: the store commits what is queued and closes
        run.exit_code = proc.popen.returncode
        run.tracebacks = proc.log_path.read_text(errors="replace").count("Traceback")
    return build_report(args, tally, run, audit_store(store))


def build_report(
    args: argparse.Namespace, tally: Tally, run: ProxyRun, audit: StoreAudit
) -> dict[str, Any]:
    lost = sorted(tally.missed_keys - audit.keys)
    cut_recorded = sorted(tally.cut_keys & audit.keys)
    errors = dict(tally.proxy_errors) | (
        {"hung_client": run.hung_clients} if run.hung_clients else {}
    )
    report: dict[str, Any] = {
        "duration_s": round(run.elapsed, 1),
        "concurrency": args.concurrency,
        "requests_sent": tally.sent,
        "requests_served": tally.answered,
        "requests_per_s": round(tally.answered / run.elapsed, 1),
        "outcomes": dict(tally.outcomes),
        "proxy_errors": sum(errors.values()),
        "proxy_error_kinds": errors,
        "error_samples": tally.error_samples,
        "completed_misses": len(tally.missed_keys),
        "store_entries": audit.entries,
        "records_lost": len(lost),
        "lost_keys": lost[:20],
        "corrupt_entries": audit.corrupt[:20],
        "cut_streams_recorded": cut_recorded[:20],
        "metrics_requests_total": run.accounted,
        "accounting_ok": run.accounted == tally.answered,
        "rss_mb": {
            "start": round(run.memory_start["VmRSS"], 1),
            "warm": round(run.memory_warm["VmRSS"], 1),
            "end": round(run.memory_end["VmRSS"], 1),
            "peak": round(run.rss_peak, 1),
        },
        # After warm-up; the anonymous part is the one a leak would grow.
        "rss_growth_mb": {
            name: round(run.memory_end[field_name] - run.memory_warm[field_name], 1)
            for name, field_name in (("total", "VmRSS"), ("anon", "RssAnon"), ("file", "RssFile"))
        },
        "proxy_exit_code": run.exit_code,
        "proxy_tracebacks": run.tracebacks,
    }
    report["ok"] = (
        not lost
        and not errors
        and not audit.corrupt
        and not cut_recorded
        and report["accounting_ok"]
        and run.exit_code == 0
        and run.tracebacks == 0
    )
    return report


def summary(report: dict[str, Any]) -> str:
    rss, growth = report["rss_mb"], report["rss_growth_mb"]
    lines = [
        f"llmreel soak: {'OK' if report['ok'] else 'FAILED'} after {report['duration_s']} s, "
        f"{report['concurrency']} clients",
        f"  requests served   {report['requests_served']} ({report['requests_per_s']}/s); "
        f"outcomes {report['outcomes']}",
        f"  proxy errors      {report['proxy_errors']}"
        + (f" {report['proxy_error_kinds']}" if report["proxy_errors"] else ""),
        f"  records lost      {report['records_lost']} (completed misses "
        f"{report['completed_misses']}, store entries {report['store_entries']})",
        f"  unsound entries   {len(report['corrupt_entries'])}; cut streams recorded "
        f"{len(report['cut_streams_recorded'])}",
        f"  accounting        llmreel_requests_total {report['metrics_requests_total']:.0f} "
        f"vs {report['requests_served']} answered",
        f"  RSS (MiB)         start {rss['start']}, warm {rss['warm']}, end {rss['end']}, "
        f"peak {rss['peak']}",
        f"  RSS growth (MiB)  after warm-up {growth['total']}: heap (anon) {growth['anon']}, "
        f"mapped files {growth['file']}",
        f"  proxy exit        {report['proxy_exit_code']}, tracebacks in its log "
        f"{report['proxy_tracebacks']}",
    ]
    lines += [f"  ! {sample}" for sample in report["error_samples"][:5]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (60)")
    parser.add_argument("--concurrency", type=int, default=16, help="client threads (16)")
    parser.add_argument("--fault-rate", type=float, default=0.1, help="share of faulty calls")
    parser.add_argument("--repeat-rate", type=float, default=0.4, help="share of repeats (hits)")
    parser.add_argument("--seed", default="llmreel", help="seed of the traffic mix")
    parser.add_argument(
        "--progress", type=float, default=5.0, help="seconds between progress lines"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument("--keep", action="store_true", help="keep the store and proxy log")
    args = parser.parse_args(argv)
    if not 1 <= args.concurrency <= 200 or not 0 < args.duration <= 3600:
        parser.error("--concurrency is 1..200 and --duration 0..3600 seconds")
    workdir = Path(tempfile.mkdtemp(prefix="llmreel-soak-"))
    report = soak(args, workdir)
    if report["ok"] and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        report["workdir"] = str(workdir)  # the store and the proxy's log, for a post-mortem
    print(summary(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
