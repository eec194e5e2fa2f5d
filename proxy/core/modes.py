"""Cache modes and per-request control: what to do with one request. Pure."""

from __future__ import annotations

import functools
from dataclasses import dataclass

MODES = ("auto", "record", "offline", "passthrough")
#: Values of the `llmreel-cache` request header.
CONTROLS = ("bypass", "refresh", "only")


@dataclass(frozen=True, slots=True)
class Plan:
    """What the proxy does with a request."""

    lookup: bool
    """Serve a recording when there is one."""
    forward: bool
    """Call the upstream (after a lookup miss, when `lookup` is set)."""
    record: bool
    """Store a successful upstream response."""
    outcome: str
    """Cache outcome when the upstream is called (or `offline_miss` when it may not be)."""
    refusal: str = ""
    """Why the upstream may not be called, for the miss message."""


@functools.lru_cache(maxsize=64)
def plan(mode: str, control: str | None) -> Plan:
    """Combine the proxy's mode with a request's `llmreel-cache` header.

    Offline and passthrough are properties of the whole run and win over the header: offline must
    never reach the network, and passthrough never touches the cache.
    """
    if mode == "passthrough":
        return Plan(lookup=False, forward=True, record=False, outcome="passthrough")
    if mode == "offline":
        refusal = (
            f"The request asked for llmreel-cache: {control}, which needs the network."
            if control in ("bypass", "refresh")
            else ""
        )
        return Plan(
            lookup=not refusal, forward=False, record=False, outcome="offline_miss", refusal=refusal
        )
    if control == "only":
        return Plan(lookup=True, forward=False, record=False, outcome="offline_miss")
    if control == "bypass":
        return Plan(lookup=False, forward=True, record=False, outcome="bypass")
    if control == "refresh" or mode == "record":
        return Plan(lookup=False, forward=True, record=True, outcome="refresh")
    return Plan(lookup=True, forward=True, record=True, outcome="miss")
