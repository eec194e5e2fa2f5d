"""Compression for stored values: zstd level 1 where a zstd module exists, zlib otherwise. Pure.

Each compressed value carries its codec byte, so a store written with one codec stays readable
wherever the same codec is installed.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Final

RAW: Final = 0
ZLIB: Final = 1
ZSTD: Final = 2


class CompressionError(ValueError):
    """A stored value that cannot be decompressed."""


def _zstd() -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]] | None:
    try:
        from compression import zstd  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        try:
            from backports import zstd  # type: ignore[import-not-found,no-redef,unused-ignore]
        except ImportError:
            return None

    def compress(data: bytes) -> bytes:
        return bytes(zstd.compress(data, level=1))

    def decompress(data: bytes) -> bytes:
        return bytes(zstd.decompress(data))

    return compress, decompress


# zstd level 1 is ~2x faster than zlib level 1 on LLM bodies, and smaller.
_ZSTD_CODEC = _zstd()


def compress(data: bytes, *, minimum: int = 0) -> tuple[int, bytes]:
    """(codec, bytes). Values shorter than `minimum`, or that do not shrink, stay RAW."""
    if len(data) < minimum:
        return RAW, data
    if _ZSTD_CODEC is not None:
        codec, packed = ZSTD, _ZSTD_CODEC[0](data)
    else:
        codec, packed = ZLIB, zlib.compress(data, 1)
    if len(packed) >= len(data):
        return RAW, data
    return codec, packed


def decompress(codec: int, data: bytes | memoryview) -> bytes:
    if codec == RAW:
        return bytes(data)
    if codec == ZLIB:
        try:
            return zlib.decompress(data)
        except zlib.error as exc:
            raise CompressionError(f"bad zlib data: {exc}") from exc
    if codec != ZSTD:
        raise CompressionError(f"unknown compression codec {codec}")
    if _ZSTD_CODEC is None:
        raise CompressionError(
            "this value is zstd-compressed and no zstd module is installed: "
            "install backports.zstd (Python < 3.14)"
        )
    try:
        return _ZSTD_CODEC[1](bytes(data))
    except Exception as exc:  # the zstd modules raise their own ZstdError
        raise CompressionError(f"bad zstd data: {exc}") from exc
