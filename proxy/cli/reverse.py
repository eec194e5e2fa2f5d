"""A reverse-proxy listener as the user names it: `--reverse https://api.openai.com@8081`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reverse:
    """A reverse-proxy listener: clients use http://HOST:PORT as the base URL of `upstream`."""

    upstream: str
    port: int

    @classmethod
    def parse(cls, spec: str) -> Reverse:
        """Parse `URL@PORT` (or just `URL`, for a free port)."""
        url, sep, port = spec.rpartition("@")
        if not sep:
            url, port = spec, "0"
        if not url.startswith(("http://", "https://")) or not port.isdigit():
            raise ValueError(
                f"{spec!r} is not URL@PORT, e.g. --reverse https://api.openai.com@8081"
            )
        return cls(url.rstrip("/"), int(port))
