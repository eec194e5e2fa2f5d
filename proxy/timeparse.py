"""Durations as people write them on a command line: `90s`, `10m`, `12h`, `30d`, `2w`. Pure."""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """Seconds in `text`; a bare number is seconds. Raises ValueError with an example."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration; write it like 90s, 10m, 12h, 30d or 2w")
    value, unit = match.groups()
    return float(value) * _UNITS[(unit or "s").lower()]
