"""Which provider a host is: the default host map, and `HOST=PROVIDER` items from the user."""

from __future__ import annotations

from collections.abc import Iterable


def parse_host_mappings(items: Iterable[str]) -> dict[str, str]:
    """`HOST=PROVIDER` items (`--provider-host`, `llmreel_hosts`) as a mapping."""
    extra: dict[str, str] = {}
    for item in items:
        host, sep, provider = item.partition("=")
        if not sep or not host.strip() or not provider.strip():
            raise ValueError(f"{item!r} is not HOST=PROVIDER, e.g. llm.internal=openai")
        extra[host.strip()] = provider.strip()
    return extra
