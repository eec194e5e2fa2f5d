"""The web UI at scale: a log of 100,000 exchanges (agent runs of 20 steps, and one of 300), then
the index build, the first page, free-text filters, a 300-step thread and the UI's RSS; and the
proxy's latency with the UI idle and with the UI busy (another process hammering its pages).

    uv run python -m bench.uibench --exchanges 100000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from llmreel.log.exchangelog import ExchangeLog
from llmreel.log.labels import Labels
from llmreel.storage.lmdbstore import LmdbStore
from llmreel.ui.index import Index, Indexer
from llmreel.ui.server import UiProcess
from tests.uiagent import agent_run

SYSTEM = "You are a coding agent. Follow the repository's style guide. " * 30  # ~1.8 KB
TASK = "Fix the failing test in the parser module and explain the root cause briefly. " * 8


def index_seconds(store_path: Path, store: LmdbStore, log: ExchangeLog) -> float:
    """How long the UI's indexer takes to catch up with everything in `log`, from nothing."""
    indexer = Indexer(Index(store_path), log, Labels(store))
    started = time.perf_counter()
    indexer.catch_up(should_stop=lambda: False)
    indexed = time.perf_counter() - started
    indexer.stop()
    return indexed


def build(store_path: Path, exchanges: int) -> dict[str, Any]:
    store = LmdbStore(store_path)
    log = ExchangeLog(store, retention_s=None)
    started = time.perf_counter()
    made = 0
    run = 0
    long_run = agent_run(300, system=SYSTEM, task="the long run " + TASK, run="LONGRUN")
    for ex in long_run:
        log.append(ex)
    made += len(long_run)
    while made < exchanges:
        steps = min(20, exchanges - made)
        word = f"needle{run:06d}"  # each run's task carries a unique word, for the rare-word filter
        for ex in agent_run(steps, system=SYSTEM, task=f"{word} {TASK}"):
            log.append(ex)
        made += steps
        run += 1
        if run % 200 == 0:
            log.flush()
    log.flush()
    written = time.perf_counter() - started
    indexed = index_seconds(store_path, store, log)
    store.close()
    size = sum(f.stat().st_size for f in store_path.glob("ui-index.sqlite3*"))
    return {"exchanges": made, "write_s": round(written, 1), "index_s": round(indexed, 1),
            "index_us_per_exchange": round(indexed / made * 1e6), "index_mb": round(size / 2**20, 1),
            "data_mb": round((store_path / "data.mdb").stat().st_size / 2**20, 1)}  # fmt: skip


def timed(client: httpx.Client, url: str, repeat: int = 5) -> float:
    client.get(url).raise_for_status()  # warm
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        client.get(url).raise_for_status()
        samples.append(time.perf_counter() - started)
    return round(statistics.median(samples) * 1000, 1)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def measure_ui(store_path: Path) -> dict[str, Any]:
    ui = UiProcess(store=str(store_path), port=0)
    ui.start()
    try:
        client = httpx.Client(base_url=ui.url, timeout=120)
        threads = client.get("/api/threads", params={"run": "LONGRUN"}).json()["items"]
        long_thread = threads[0]["id"]
        result = {
            "first_page_ms": timed(client, "/"),
            "first_page_json_ms": timed(client, "/api/exchanges"),
            "rare_word_ms": timed(client, "/?q=needle000123"),
            "common_word_ms": timed(client, "/?q=parser"),
            "model_filter_ms": timed(client, "/?model=gpt-4o-mini&errors=1"),
            "thread_300_steps_ms": timed(client, "/threads/" + long_thread, repeat=3),
            "threads_page_ms": timed(client, "/threads"),
        }
        assert ui.pid is not None
        result["ui_rss_mb"] = rss_mb(ui.pid)
        return result
    finally:
        ui.stop()


def proxy_with_ui(store_path: Path, requests: int) -> dict[str, Any]:
    """p50/p95 of calls through a real proxy, with no UI, then with a UI process kept busy."""
    import ssl

    from llmreel.cli.clientenv import write_bundle
    from llmreel.cli.server import ProxySettings
    from tests.conftest import ProxyThread
    from tests.fakeupstream import FakeUpstream

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as confdir, FakeUpstream(tls=True) as upstream:
        write_bundle(confdir)
        proxy = ProxyThread(ProxySettings(port=0, metrics_port=0, store=str(store_path), confdir=confdir,
                                          mode="passthrough",
                                          sets=[f"ssl_verify_upstream_trusted_ca={upstream.cert_path}"])).start()  # fmt: skip
        verify = ssl.create_default_context(cafile=str(Path(confdir) / "llmreel-ca-bundle.pem"))
        try:
            with httpx.Client(proxy=proxy.url, verify=verify, timeout=60) as client:

                def calls() -> list[float]:
                    out = []
                    for n in range(requests):
                        body = {
                            "model": "gpt-4o-mini",
                            "messages": [{"role": "user", "content": f"q {n}"}],
                        }
                        started = time.perf_counter()
                        client.post(f"{upstream.url}/v1/chat/completions", json=body,
                                    headers={"authorization": "Bearer sk-test-0000000000000000000000"}).raise_for_status()  # fmt: skip
                        out.append(time.perf_counter() - started)
                    return out

                calls()  # warm
                idle = calls()
                ui = UiProcess(store=str(store_path), port=0)
                ui.start()
                stop = threading.Event()
                hits = [0]

                def hammer() -> None:
                    with httpx.Client(base_url=ui.url, timeout=120) as browser:
                        while not stop.is_set():
                            for url in ("/", "/?q=parser", "/threads", "/api/exchanges?limit=200"):
                                browser.get(url)
                                hits[0] += 1

                workers = [threading.Thread(target=hammer) for _ in range(2)]
                for w in workers:
                    w.start()
                try:
                    busy = calls()
                finally:
                    stop.set()
                    for w in workers:
                        w.join()
                    ui.stop()
        finally:
            proxy.stop()
    for name, samples in (("ui_off", idle), ("ui_busy", busy)):
        ordered = sorted(samples)
        results[name] = {"p50_ms": round(ordered[len(ordered) // 2] * 1000, 2),
                         "p95_ms": round(ordered[int(len(ordered) * 0.95)] * 1000, 2)}  # fmt: skip
    results["ui_requests_during_busy"] = hits[0]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--exchanges", type=int, default=100_000)
    parser.add_argument("--proxy-requests", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store_path = Path(tmp) / "store"
        print("build", build(store_path, args.exchanges), flush=True)
        print("ui", measure_ui(store_path), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        store_path = Path(tmp) / "store"
        seed = LmdbStore(store_path)
        seed.close()
        print("proxy", proxy_with_ui(store_path, args.proxy_requests), flush=True)


if __name__ == "__main__":
    main()
