"""The LMDB store at scale: lookup and insert latency and size at 10k, 100k and 1M recordings.

Synthetic but realistic entries: the canonical form of a ~1.7 KB chat-completions request and a
~2 KB response body (70% JSON completions, 30% SSE streams with chunk timings), packed by
`proxy.records.pack` exactly as the proxy stores them. Keys are SHA-256 hex like real ones, so
inserts and lookups land all over the B-tree. Reads run with a warm page cache, as in a proxy
that has been serving for a while.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from llmreel.storage.lmdbstore import LmdbStore, entry_key
from llmreel.storage.records import Recording, pack

from . import payloads
from .procs import log
from .stats import summarize_ms

NAMESPACE = "default"
BATCH = 10_000
_WORDS = (
    "the model returns a short answer about files tests proxies streams records keys cache "
    "latency tokens budget agent tool call result error retry network replay offline"
).split()


def key_for(i: int) -> str:
    return hashlib.sha256(b"bench-entry-%d" % i).hexdigest()[:32]


def _text(rng: random.Random, nbytes: int) -> str:
    words: list[str] = []
    size = 0
    while size < nbytes:
        word = rng.choice(_WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)


def _bodies(rng: random.Random) -> list[tuple[bytes, list[tuple[float, int]]]]:
    """A pool of response bodies (and chunk timings for streams) of about 2 KB."""
    pool: list[tuple[bytes, list[tuple[float, int]]]] = []
    for n in range(32):
        text = _text(rng, 1900 if n % 10 < 7 else 1000)
        if n % 10 < 7:
            obj = {"id": f"chatcmpl-{n}", "object": "chat.completion", "model": "gpt-4o-mini",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 412, "completion_tokens": 380, "total_tokens": 792}}  # fmt: skip
            pool.append((orjson.dumps(obj), []))
        else:
            pieces = [text[i : i + 48] for i in range(0, len(text), 48)]
            events = [b"data: " + orjson.dumps({"choices": [{"delta": {"content": p}}]}) + b"\n\n"
                      for p in pieces] + [b"data: [DONE]\n\n"]  # fmt: skip
            chunks = [(round(0.3 + 0.02 * k, 6), len(e)) for k, e in enumerate(events)]
            pool.append((b"".join(events), chunks))
    return pool


class _Factory:
    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.bodies = _bodies(self.rng)
        self.prefix, self.suffix = payloads.body_template()

    def recording(self, i: int) -> Recording:
        body, chunks = self.bodies[i % len(self.bodies)]
        request_body = orjson.loads(
            self.prefix + b"Question number %d about the code" % i + self.suffix
        )
        return Recording(
            key=key_for(i),
            namespace=NAMESPACE,
            request={
                "method": "POST",
                "scheme": "https",
                "host": "api.openai.com",
                "port": 443,
                "path": payloads.PATH,
                "query": [],
                "headers": {},
                "body": request_body,
            },
            status=200,
            headers=[
                ("content-type", "text/event-stream" if chunks else "application/json"),
                ("openai-version", "2020-10-01"),
                ("x-request-id", f"req_{i:032x}"),
            ],
            body=body,
            chunks=chunks,
            recorded_at=1.7e9 + i,
            provider="openai",
            model="gpt-4o-mini",
            usage={"input": 412, "output": 380, "cache_read": 0, "cache_write": 0, "reasoning": 0},
            duration_s=1.234,
            ttfc_s=0.3 if chunks else None,
        )


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - start) / 1e6


def run(directory: Path, scales: list[int], lookups: int, inserts: int) -> list[dict[str, Any]]:
    """Fill a fresh store up to each scale in turn and measure it there."""
    factory = _Factory()
    rng = random.Random(11)
    results: list[dict[str, Any]] = []
    count = 0  # entries written so far, indexed 0..count-1
    with LmdbStore(directory) as store:
        for scale in scales:
            started = time.perf_counter()
            target = scale - inserts
            fill_start = count
            while count < target:
                end = min(count + BATCH, target)
                writes: list[tuple[bytes, bytes, bytes | None]] = sorted(
                    (b"entries", entry_key(NAMESPACE, key_for(i)), pack(factory.recording(i)))
                    for i in range(count, end)
                )
                store.write_raw(writes)
                count = end
                if count % 100_000 == 0 or count == target:
                    rate = (count - fill_start) / (time.perf_counter() - started)
                    log(f"store: {count:,} / {scale:,} entries ({rate:,.0f}/s)")
            fill_s = time.perf_counter() - started
            filled = count - fill_start
            # Single writes, each its own committed (fsynced) transaction, as `put` does.
            insert_ms = [_timed(lambda i=i: store.put(factory.recording(i)))  # type: ignore[misc]
                         for i in range(count, count + inserts)]  # fmt: skip
            count += inserts
            keys = [key_for(rng.randrange(count)) for _ in range(lookups)]
            for key in keys[: lookups // 10]:  # warm up the interpreter paths, not the cache
                store.get(NAMESPACE, key)
            hit_ms = [_timed(lambda k=k: store.get(NAMESPACE, k)) for k in keys]  # type: ignore[misc]
            absent = [key_for(-1 - n) for n in range(lookups)]
            miss_ms = [_timed(lambda k=k: store.get(NAMESPACE, k)) for k in absent]  # type: ignore[misc]
            stats = store.stats()
            file_bytes = os.path.getsize(directory / "data.mdb")
            results.append({
                "entries": stats.entries,
                "lookup_hit": summarize_ms(hit_ms),
                "lookup_miss": summarize_ms(miss_ms),
                "insert": summarize_ms(insert_ms),
                "bulk_insert_per_s": round(filled / fill_s) if filled else None,
                "size_bytes": stats.size_bytes,
                "file_bytes": file_bytes,
                "bytes_per_entry": round(stats.size_bytes / stats.entries),
            })  # fmt: skip
            r = results[-1]
            log(f"store at {stats.entries:,}: lookup p50 {r['lookup_hit']['p50']:.3f} ms "
                f"p99 {r['lookup_hit']['p99']:.3f} ms, insert p50 {r['insert']['p50']:.2f} ms, "
                f"{stats.size_bytes / 2**20:,.0f} MiB")  # fmt: skip
    return results
