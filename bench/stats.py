"""Small statistics helpers: percentiles and medians of samples."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between closest ranks."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summarize_ms(samples: Sequence[float]) -> dict[str, float]:
    """p50, p99, mean and max of millisecond samples, rounded to microseconds."""
    return {
        "n": len(samples),
        "p50": round(percentile(samples, 50), 4),
        "p99": round(percentile(samples, 99), 4),
        "mean": round(statistics.fmean(samples), 4),
        "max": round(max(samples), 4),
    }


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))
