"""The hot path's helpers: caches that forget and never grow past their bound, and compression
that reuses its compressor."""

from __future__ import annotations

import os

import pytest

from llmreel.core.bounded import BoundedCache
from llmreel.core.redact import HeaderMasker, mask_headers
from llmreel.storage import compress


def test_cache_evicts_least_recently_used_by_weight() -> None:
    cache: BoundedCache[str, int] = BoundedCache(max_bytes=100)
    for name in "abcd":
        cache.put(name, ord(name), 25)
    assert cache.bytes == 100 and len(cache) == 4
    assert cache.get("a") == ord("a")  # now the most recently used
    cache.put("e", 5, 25)
    assert cache.get("b") is None and cache.get("a") == ord("a")  # b was the oldest
    assert cache.bytes == 100
    cache.put("huge", 0, 26)  # over a quarter of the budget: never kept
    assert cache.get("huge") is None and cache.bytes == 100
    cache.put("a", 1, 10)  # replaced, with its new weight
    assert cache.get("a") == 1 and cache.bytes == 85
    cache.discard("a")
    assert cache.get("a") is None and cache.bytes == 75


def test_cache_bounds_the_number_of_entries_too() -> None:
    cache: BoundedCache[int, int] = BoundedCache(max_bytes=1 << 20, max_items=3)
    for i in range(10):
        cache.put(i, i, 1)
    assert len(cache) == 3 and cache.get(9) == 9 and cache.get(6) is None


def test_header_masker_masks_as_mask_headers_does_and_forgets_past_its_cap() -> None:
    masker = HeaderMasker(cap=2)
    headers = [("authorization", "Bearer sk-proj-Zq8xT3vB7nM2kL9pR4sW6yU1hJ5gF0dA"),
               ("content-type", "application/json"), ("x-note", "key sk-ant-api03-Yw4eR7tU2iO9pA3sD6fG1hJ8kL5zX0cV"),
               ("x-long", "v" * 5000)]  # fmt: skip
    for _ in range(3):
        assert masker(headers) == mask_headers(headers)
    assert len(masker._memo) <= 2


def test_compression_reusing_a_compressor_per_thread_makes_the_one_shot_frames() -> None:
    import threading

    zstd = pytest.importorskip("backports.zstd")
    values = [b"", b"x", os.urandom(3000), b"lorem ipsum " * 500, os.urandom(200_000)]
    out: dict[int, list[tuple[int, bytes]]] = {}

    def run(n: int) -> None:
        out[n] = [compress.compress(v) for v in values * 2]

    threads = [threading.Thread(target=run, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for results in out.values():
        for value, (codec, packed) in zip(values * 2, results, strict=True):
            if codec == compress.ZSTD:
                assert packed == zstd.compress(value, level=1)
            assert compress.decompress(codec, packed) == value
