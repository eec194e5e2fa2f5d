"""Replay pacing: when each recorded chunk of a stream is sent again. Pure.

`fast` sends a replayed stream at once (the default: tests run as fast as they can);
`original` keeps the recorded gaps, so UI streaming and timeouts see realistic timing; a number
scales the gaps (0.5: twice as fast).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

PACES = ("fast", "original")


def parse_pace(value: str) -> float | None:
    """The factor the recorded offsets are multiplied by; None for `fast`."""
    text = value.strip().lower()
    if text in ("", "fast"):
        return None
    if text == "original":
        return 1.0
    try:
        factor = float(text.rstrip("x"))
    except ValueError:
        factor = -1.0
    if not 0 <= factor <= 1000:
        raise ValueError(f"{value!r} is not fast, original or a factor such as 0.5 or 2")
    return factor


def schedule(
    body: bytes, chunks: Sequence[tuple[float, int]], factor: float
) -> Iterator[tuple[float, bytes]]:
    """(when, bytes) for each recorded chunk: `when` is seconds after the replay starts.

    Chunk sizes that do not add up to the body (a recording edited by hand) fall back to one
    chunk at the last offset, so every byte is still sent.
    """
    if not chunks or sum(size for _, size in chunks) != len(body):
        yield ((chunks[-1][0] if chunks else 0.0) * factor, body)
        return
    start = 0
    for offset, size in chunks:
        yield (max(offset, 0.0) * factor, body[start : start + size])
        start += size
