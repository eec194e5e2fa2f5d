"""Compression for stored values: zstd level 1 where a zstd module exists, zlib otherwise. Pure.

Each compressed value carries its codec byte, so a store written with one codec stays readable
wherever the same codec is installed.
"""

from __future__ import annotations

import re
import threading
import zlib
from collections.abc import Buffer, Callable, Iterator
from typing import Final, Protocol, cast

RAW: Final = 0
ZLIB: Final = 1
ZSTD: Final = 2


class CompressionError(ValueError):
    """A stored value that cannot be decompressed."""


class _Decompressor(Protocol):
    """An incremental decompressor: zlib's `decompressobj()`, zstd's `ZstdDecompressor()`."""

    @property
    def eof(self) -> bool: ...

    def decompress(self, data: Buffer, /) -> bytes: ...


def _zstd() -> (
    tuple[Callable[[bytes], bytes], Callable[[bytes], bytes], Callable[[], _Decompressor]] | None
):
    try:
        from compression import zstd  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        try:
            from backports import zstd  # type: ignore[import-not-found,no-redef,unused-ignore]
        except ImportError:
            return None

    local = threading.local()

    def compress(data: bytes) -> bytes:
        # What zstd.compress(data, level=1) does, with one compressor per thread kept for
        # reuse: making its context is a good part of compressing a small value.
        compressor = getattr(local, "compressor", None)
        if compressor is None:
            compressor = local.compressor = zstd.ZstdCompressor(level=1)
        try:
            return bytes(compressor.compress(data, mode=zstd.ZstdCompressor.FLUSH_FRAME))
        except BaseException:
            local.compressor = None  # a half-written frame must not prefix the next value
            raise

    def decompress(data: bytes) -> bytes:
        return bytes(zstd.decompress(data))

    def decompressor() -> _Decompressor:
        return cast(_Decompressor, zstd.ZstdDecompressor())

    return compress, decompress, decompressor


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


# How each codec's output begins: a zstd frame's magic number, a zlib stream's header at level 1.
_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
_ZLIB_HEADER: Final = b"\x78\x01"
_CARVE_STEP = 1 << 16  # input fed at a time: a candidate that is no stream fails within it
_CARVE_LIMIT = 64 << 20  # output kept per stream, bounding memory whatever the data holds


def embedded(data: Buffer) -> Iterator[bytes]:
    """The content of every compressed value found anywhere in `data`, decompressed.

    For scanning what no index points to any more, such as the freed pages of a database file:
    each zstd frame or zlib stream is decoded as far as it goes, so a value whose end was
    overwritten still yields its beginning.
    """
    view = memoryview(data).cast("B")
    openers: list[tuple[bytes, Callable[[], _Decompressor]]] = [(_ZLIB_HEADER, zlib.decompressobj)]
    if _ZSTD_CODEC is not None:
        openers.append((_ZSTD_MAGIC, _ZSTD_CODEC[2]))
    for magic, opener in openers:
        for found in re.finditer(re.escape(magic), view):
            content = _inflate(opener(), view, found.start())
            if content:
                yield content


def _inflate(decompressor: _Decompressor, view: memoryview, start: int) -> bytes:
    pieces: list[bytes] = []
    size = 0
    for offset in range(start, len(view), _CARVE_STEP):
        try:
            piece = decompressor.decompress(view[offset : offset + _CARVE_STEP])
        except Exception:  # noqa: BLE001 - not a stream, or its end was overwritten: keep what decoded
            break
        pieces.append(piece)
        size += len(piece)
        if decompressor.eof or size >= _CARVE_LIMIT:
            break
    return b"".join(pieces)
