"""Durations as people write them on a command line: `90s`, `10m`, `12h`, `30d`, `2w`, `1d12h`. Pure."""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> float:
    """Seconds in `text` (a sum of parts like `1d12h`; a bare number is seconds).

    Raises ValueError with an example of what is accepted.
    """
    cleaned = text.strip().lower().replace(" ", "")
    try:
        return float(cleaned)
    except ValueError:
        pass
    parts = list(_PART.finditer(cleaned))
    if not parts or "".join(p.group(0) for p in parts) != cleaned:
        raise ValueError(
            f"{text!r} is not a duration; write it like 90s, 10m, 12h, 30d, 2w or 1d12h"
        )
    return sum(float(p.group(1)) * _UNITS[p.group(2)] for p in parts)
