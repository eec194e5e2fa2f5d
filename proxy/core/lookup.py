"""Lookup policy: which recording answers a request, given sequences and `--max-age`. Pure.

The store is reached through a `get(seq)` function, so the policy is tested without one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar


class Dated(Protocol):
    @property
    def recorded_at(self) -> float: ...


R = TypeVar("R", bound=Dated)


@dataclass(frozen=True, slots=True)
class Found[R: Dated]:
    recording: R | None
    stale_age_s: float | None = None
    """Set when the recording is older than `--max-age` and served anyway (replay only)."""


def lookup[R: Dated](
    get: Callable[[int], R | None],
    seq: int,
    *,
    replay_only: bool,
    max_age_s: float | None,
    now: float,
) -> Found[R]:
    """The recording for occurrence `seq` of a request.

    - Sequence mode, replay only: after the last recorded occurrence, the last one is served
      again (an agent that retries more often than it did while recording still runs).
    - `max_age_s`: an older recording is a miss when the upstream may be called (so it is
      recorded again); when it may not, it is served and reported as stale.
    """
    rec = get(seq)
    if rec is None and seq and replay_only:
        for earlier in range(seq - 1, -1, -1):
            rec = get(earlier)
            if rec is not None:
                break
    if rec is None or max_age_s is None:
        return Found(rec)
    age = now - rec.recorded_at
    if age <= max_age_s:
        return Found(rec)
    if not replay_only:
        return Found(None)
    return Found(rec, stale_age_s=age)
