"""How closely `--replay-pace original` keeps a recorded stream's timing (issue: within ±10 ms).

Records a streamed chat answer from the fake upstream with a pause between events, then replays
it offline at its original pace several times through a real proxy and, for every recorded
chunk, compares when its last byte reached the client with when it was recorded (both measured
from the first chunk, so connection setup does not count).

    uv run python -m bench.pacebench [--pause-ms 50] [--replays 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import httpx

from llmreel.cli.clientenv import write_bundle
from llmreel.cli.server import ProxySettings
from llmreel.storage.lmdbstore import LmdbStore
from tests.conftest import ProxyThread
from tests.fakeupstream import FakeUpstream

BODY = {"model": "gpt-4o-mini", "stream": True,
        "messages": [{"role": "user", "content": "Count slowly from one to twenty, in words."}]}  # fmt: skip


def _arrivals(client: httpx.Client, url: str, headers: dict[str, str]) -> list[tuple[float, int]]:
    """(seconds since sending, bytes received so far) after each read."""
    out: list[tuple[float, int]] = []
    total = 0
    start = time.monotonic()
    with client.stream("POST", url, json=BODY, headers=headers) as reply:
        for chunk in reply.iter_raw():
            total += len(chunk)
            out.append((time.monotonic() - start, total))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pause-ms", type=int, default=50)
    parser.add_argument("--replays", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llmreel-pacebench-"))
    confdir = work / "confdir"
    bundle = write_bundle(str(confdir))
    with FakeUpstream(tls=True) as fake:
        base = ProxySettings(port=0, metrics_port=0, store=str(work / "store"), confdir=str(confdir),
                             sets=[f"ssl_verify_upstream_trusted_ca={fake.cert_path}"])  # fmt: skip
        url = f"{fake.url}/v1/chat/completions"
        proxy = ProxyThread(base).start()
        with httpx.Client(proxy=proxy.url, verify=str(bundle), timeout=60) as client:
            _arrivals(client, url, {"x-fake-delay-ms": str(args.pause_ms)})
        proxy.stop()
        with LmdbStore(work / "store", create=False) as store:
            (rec,) = list(store.iter())
        recorded, edges, total = [], [], 0
        for offset, size in rec.chunks:
            total += size
            recorded.append(offset)
            edges.append(total)
        deviations: list[float] = []
        proxy = ProxyThread(replace(base, mode="offline", replay_pace="original")).start()
        with httpx.Client(proxy=proxy.url, verify=str(bundle), timeout=60) as client:
            for _ in range(args.replays):
                got = _arrivals(client, url, {})
                when = [next(t for t, n in got if n >= edge) for edge in edges]
                deviations += [
                    abs((w - when[0]) - (r - recorded[0])) * 1000
                    for w, r in zip(when, recorded, strict=True)
                ][1:]
        proxy.stop()
    deviations.sort()
    p95 = deviations[int(0.95 * (len(deviations) - 1))]
    print(f"{len(rec.chunks)} chunks over {recorded[-1] - recorded[0]:.2f} s recorded; "
          f"{args.replays} paced replays: |deviation| p50 {statistics.median(deviations):.2f} ms, "
          f"p95 {p95:.2f} ms, max {deviations[-1]:.2f} ms")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
