"""Logging for the command line: one format for the proxy, its workers and the supervisor."""

from __future__ import annotations

import logging
import sys


def setup_logging(quiet: bool, verbose: bool, name: str = "") -> None:
    """Log to standard error at the level the flags ask for; `name` tags a worker's lines."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    tag = f"[{name}] " if name else ""
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s %(name)s: {tag}%(message)s", "%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # mitmproxy's per-connection chatter is noise here; its warnings and errors are not.
    for noisy in ("mitmproxy", "asyncio", "passlib"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    # The HTTP/2 libraries log raw header values (API keys, cookies) at DEBUG: never show them.
    for secret in ("hpack", "h2"):
        logging.getLogger(secret).setLevel(logging.WARNING)
