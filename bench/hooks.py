"""What llmreel's addon costs per request, measured in-process, without sockets.

The wrk runs measure whole processes on a shared 2-core box, which is noisy. Here the addon's
hooks are driven directly, in mitmproxy's order, with mitmproxy's own test flows carrying the
same bodies as the load test (and the fake upstream's real reply bytes); each path is timed as
the best of several batches, which is stable even when other jobs run. A cProfile pass then
says which functions the time goes to.

Paths: miss (record a JSON completion), miss_stream (record an SSE stream, 19 chunks through the
tee), hit (replay a recording), passthrough. "loop" time is what the event loop spends in the
hooks; "with commit" adds the CPU the store's writer thread spends committing. Both are CPU
time, which other jobs on the machine disturb far less than wall time.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import inspect
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mitmproxy.test import taddons, tflow, tutils
from prometheus_client import CollectorRegistry

from llmreel.addons.recorder import Recorder
from tests.fakeupstream import build_reply

from . import payloads
from .procs import ROOT

_REQUEST_HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench",
                    "x-fake-body-bytes": "2000", "user-agent": "OpenAI/Python 1.50.0"}  # fmt: skip


_REPLY = "bench_reply"


def _flow(prompt: str, stream: bool) -> Any:
    """A request as mitmproxy parses it, with the fake upstream's reply ready (not timed)."""
    req = tutils.treq(method=b"POST", scheme=b"https", host="api.openai.com", port=443,
                      path=payloads.PATH.encode(), headers=(),
                      content=payloads.body(prompt, stream=stream))  # fmt: skip
    for name, value in _REQUEST_HEADERS.items():
        req.headers[name] = value
    flow = tflow.tflow(req=req)
    reply = build_reply(
        "POST", req.path, "", lambda name: req.headers.get(name), req.content or b""
    )
    headers = tuple((k.encode(), v.encode()) for k, v in reply.headers)
    response = tutils.tresp(status_code=reply.status, headers=headers, content=reply.body)
    flow.metadata[_REPLY] = (response, reply.events or [])
    return flow


async def _exchange(rec: Recorder, flow: Any) -> None:
    """The hooks mitmproxy calls for one request, in its order."""
    await rec.request(flow)
    response, events = flow.metadata.pop(_REPLY)
    if flow.response is None:
        flow.response = response
    else:
        events = []
    rec.responseheaders(flow)
    stream = flow.response.stream
    if callable(stream):
        for event in events:
            stream(event)
        stream(b"")
    await rec.response(flow)


class _Bench:
    def __init__(self, store: Path, mode: str) -> None:
        self.rec = Recorder(registry=CollectorRegistry())
        self.ctx = taddons.context(self.rec)  # type: ignore[no-untyped-call]
        self.tctx = self.ctx.__enter__()  # type: ignore[no-untyped-call]
        self.tctx.configure(self.rec, llmreel_store=str(store), llmreel_mode=mode)

    def close(self) -> None:
        self.rec.done()
        self.ctx.__exit__(None, None, None)  # type: ignore[no-untyped-call]

    async def batch(self, flows: list[Any]) -> tuple[float, float]:
        """CPU seconds for a batch of exchanges: (this thread's, the process's after commit).

        CPU time rather than wall time, so that other jobs on the machine matter less; the
        prepared flows are frozen out of the garbage collector's way first.
        """
        gc.collect()
        gc.freeze()
        try:
            thread0, process0 = time.thread_time(), time.process_time()
            for flow in flows:
                await _exchange(self.rec, flow)
            loop_s = time.thread_time() - thread0
            if self.rec.store is not None:
                self.rec.store.flush(30)
            await asyncio.sleep(0)  # the commit callbacks
            return loop_s, time.process_time() - process0
        finally:
            gc.unfreeze()


async def _hook_floor(flows: list[Any]) -> float:
    """The floor for serving from memory: what bench/addons/hook.py does per request."""
    from .addons import hook

    gc.collect()
    start = time.thread_time()
    for flow in flows:
        hook.request(flow)
    return time.thread_time() - start


def _prompts(n: int) -> list[str]:
    nonce = secrets.token_hex(4)
    return [f"Explain request {nonce}-{i} of the benchmark in two sentences." for i in range(n)]


async def _measure(bench: _Bench, make: Callable[[], list[Any]], repeats: int) -> dict[str, float]:
    best_loop = best_total = float("inf")
    n = 0
    for _ in range(repeats):
        flows = make()
        n = len(flows)
        loop_s, total_s = await bench.batch(flows)
        best_loop, best_total = min(best_loop, loop_s), min(best_total, total_s)
    return {
        "loop_us": round(best_loop / n * 1e6, 1),
        "with_commit_us": round(best_total / n * 1e6, 1),
    }


def _profile(bench: _Bench, flows: list[Any], top: int) -> dict[str, list[dict[str, Any]]]:
    """cProfile of one batch: top functions by self time, and llmreel's by cumulative time.

    Coroutines (the async hooks) are left out of the cumulative list: cProfile counts each
    resumption of a coroutine as a call and over-counts their cumulative time.
    """
    profiler = cProfile.Profile()
    loop = asyncio.new_event_loop()
    try:
        profiler.enable()
        for flow in flows:
            loop.run_until_complete(_exchange(bench.rec, flow))
        profiler.disable()
    finally:
        loop.close()
    entries = profiler.getstats()
    total = sum(e.inlinetime for e in entries)

    def describe(e: Any) -> tuple[str, str, bool, bool]:
        code = e.code
        if isinstance(code, str):
            return code, "builtin", False, False
        file = code.co_filename
        ours = file.startswith(str(ROOT)) and not any(
            part in file for part in ("/.venv/", "/bench/", "/tests/")
        )
        where = "/".join(Path(file).parts[-2:]) + f":{code.co_firstlineno}"
        return code.co_qualname, where, ours, bool(code.co_flags & inspect.CO_COROUTINE)

    def rows(by_cumulative: bool) -> list[dict[str, Any]]:
        out = []
        key = (lambda e: e.totaltime) if by_cumulative else (lambda e: e.inlinetime)
        for e in sorted(entries, key=key, reverse=True):
            func, where, ours, coroutine = describe(e)
            if by_cumulative and (not ours or coroutine):
                continue
            out.append({"function": func, "where": where,
                        "calls_per_request": round(e.callcount / len(flows), 2),
                        "self_share": round(e.inlinetime / total, 4),
                        "cum_share": round(e.totaltime / total, 4)})  # fmt: skip
            if len(out) == top:
                break
        return out

    return {"top_self": rows(False), "llmreel_cumulative": rows(True)}


def run(batch: int = 500, repeats: int = 5, top: int = 15) -> dict[str, Any]:
    """Per-request cost of each path, and where the miss and hit paths spend it."""
    results: dict[str, Any] = {"batch": batch, "repeats": repeats}
    with tempfile.TemporaryDirectory(prefix="llmreel-bench-hooks-") as tmp:
        auto = _Bench(Path(tmp) / "auto", "auto")
        passthrough = _Bench(Path(tmp) / "pass", "passthrough")
        recorded = _prompts(batch)
        loop = asyncio.new_event_loop()
        try:
            # Record the hit set first (this also warms every code path up).
            loop.run_until_complete(auto.batch([_flow(p, False) for p in recorded]))
            paths = {
                "miss": (auto, lambda: [_flow(p, False) for p in _prompts(batch)]),
                "miss_stream": (auto, lambda: [_flow(p, True) for p in _prompts(batch)]),
                "hit": (auto, lambda: [_flow(p, False) for p in recorded]),
                "passthrough": (passthrough, lambda: [_flow(p, False) for p in _prompts(batch)]),
            }
            for name, (bench, make) in paths.items():
                results[name] = loop.run_until_complete(_measure(bench, make, repeats))
            floor = min(loop.run_until_complete(_hook_floor([_flow(p, False) for p in recorded]))
                        for _ in range(repeats))  # fmt: skip
            results["hook_floor"] = {"loop_us": round(floor / batch * 1e6, 1)}
            results["hit_extra_over_hook_us"] = round(
                results["hit"]["loop_us"] - results["hook_floor"]["loop_us"], 1
            )
        finally:
            loop.close()
        results["profile_miss"] = _profile(auto, [_flow(p, False) for p in _prompts(batch)], top)
        results["profile_hit"] = _profile(auto, [_flow(p, False) for p in recorded], top)
        auto.close()
        passthrough.close()
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
