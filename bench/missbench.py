"""Explaining a miss: what it costs with 10k recordings, before and after the endpoint index.

A miss is explained by the closest recording of the same endpoint in the namespace. *Before*,
the proxy decoded every recording of the namespace (`explain(request, (r.request for r in
store.iter(namespace)))`); *after*, it asks the store for the few most alike
(`explain(request, store.candidates(namespace, request))`). Each explanation is checked to be
as close (as few changes) as the full scan's. Both are timed on the same LMDB
store and the same export directory, filled with `storebench`'s synthetic recordings: all of
one endpoint in one namespace, the worst case for the index. Each miss is a recorded request
with one change (its question, or its temperature). Also timed: what the index costs once, when
an export directory is first asked and when an LMDB store from before the index is opened.

    uv run python -m bench.missbench             # 10k recordings
    uv run python -m bench.missbench --entries 2000
"""

from __future__ import annotations

import argparse
import copy
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lmdb

from llmreel.core.diff import closest, describe, field_diff
from llmreel.storage.dirstore import DirStore, sync_export
from llmreel.storage.lmdbstore import LmdbStore, Store, entry_key
from llmreel.storage.records import pack

from .procs import log
from .stats import median
from .storebench import NAMESPACE, _Factory

_BATCH = 1000


def _misses(factory: _Factory, entries: int, count: int) -> list[dict[str, Any]]:
    """`count` requests, each a recorded one with one change."""
    out = []
    for n in range(count):
        request = copy.deepcopy(factory.recording(n * entries // count).request)
        if n % 2:
            request["body"]["temperature"] = 0.99
        else:
            messages = request["body"]["messages"]
            messages[-1]["content"] = str(messages[-1]["content"]) + " (reworded)"
        out.append(request)
    return out


def _before(store: Store, request: dict[str, Any]) -> int:
    return _explained(request, (r.request for r in store.iter(NAMESPACE)))


def _after(store: Store, request: dict[str, Any]) -> int:
    return _explained(request, store.candidates(NAMESPACE, request))


def _explained(request: dict[str, Any], candidates: Iterable[dict[str, Any]]) -> int:
    """What `diff.explain` does; how many changes the explanation lists."""
    found = closest(request, candidates)
    assert found is not None
    changes = field_diff(found[0], request)
    describe(changes)
    return len(changes)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return (time.perf_counter() - started) * 1000, result


def _compare(store: Store, misses: list[dict[str, Any]], before_n: int) -> dict[str, Any]:
    store.candidates(NAMESPACE, misses[0])  # the first call builds what the index needs
    before, after, as_close = [], [], 0
    for n, request in enumerate(misses):
        ms, changes = _timed(lambda r=request: _after(store, r))  # type: ignore[misc]
        after.append(ms)
        if n < before_n:
            ms, old_changes = _timed(lambda r=request: _before(store, r))  # type: ignore[misc]
            before.append(ms)
            # Several recordings may be equally close: count the choice, not which one.
            as_close += changes <= old_changes
    return {
        "before_ms": round(median(before), 2),
        "after_ms": round(median(after), 2),
        "speedup": round(median(before) / median(after)),
        "as_close": f"{as_close}/{len(before)}",
        "misses": len(misses),
    }


def run(
    directory: Path, entries: int = 10_000, misses: int = 40, before: int = 5
) -> dict[str, Any]:
    """Fill an LMDB store and an export directory with `entries` recordings; time misses."""
    factory = _Factory()
    lmdb_path, export_path = directory / "lmdb", directory / "export"
    log(f"misses: filling an LMDB store and an export directory with {entries:,} recordings")
    with LmdbStore(lmdb_path) as store:
        for start in range(0, entries, _BATCH):
            recs = [factory.recording(i) for i in range(start, min(start + _BATCH, entries))]
            store.write_raw([(b"entries", entry_key(r.namespace, r.key), pack(r)) for r in recs])
        sync_export(store.iter(), export_path)
    requests = _misses(factory, entries, misses)
    results: dict[str, Any] = {"entries": entries}
    with LmdbStore(lmdb_path) as store:
        results["lmdb"] = _compare(store, requests, before)
    env = lmdb.open(str(lmdb_path), max_dbs=16)
    with env.begin(write=True) as txn:  # a store from before the index
        txn.drop(env.open_db(b"endpoints", txn=txn), delete=True)
    env.close()
    with LmdbStore(lmdb_path) as store:
        ms, _ = _timed(lambda: store.candidates(NAMESPACE, requests[0]))
        results["lmdb"]["index_old_store_s"] = round(ms / 1000, 2)
    with DirStore(export_path) as dirstore:
        ms, _ = _timed(lambda: dirstore.candidates(NAMESPACE, requests[0]))
        results["export"] = _compare(dirstore, requests, before)
        results["export"]["index_first_call_s"] = round(ms / 1000, 2)
    for kind in ("lmdb", "export"):
        r = results[kind]
        log(f"misses ({kind}, {entries:,} recordings): {r['before_ms']:,.0f} ms -> "
            f"{r['after_ms']:.1f} ms per explained miss ({r['speedup']}x), as close "
            f"{r['as_close']}")  # fmt: skip
    return results


def table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| store | before: decode the namespace, ms | after: `candidates`, ms | speedup "
        "| as close as before | one-time indexing |",
        "|---|---|---|---|---|---|",
    ]
    for kind, once in (("lmdb", "index_old_store_s"), ("export", "index_first_call_s")):
        r = results[kind]
        what = "an old store, first miss" if kind == "lmdb" else "first miss after start"
        lines.append(
            f"| {kind} | {r['before_ms']:,.0f} | {r['after_ms']:.1f} | {r['speedup']:,}x "
            f"| {r['as_close']} | {r[once]:.1f} s ({what}) |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.missbench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--entries", type=int, default=10_000, help="Recordings (default 10k).")
    parser.add_argument("--misses", type=int, default=40, help="Misses timed after (default 40).")
    parser.add_argument("--before", type=int, default=5, help="Misses timed before (default 5).")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="llmreel-missbench-"))
    try:
        results = run(work, args.entries, args.misses, args.before)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"Explained misses, {results['entries']:,} recordings of one endpoint (medians):\n")
    print("\n".join(table(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
