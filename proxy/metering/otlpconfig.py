"""Where OpenTelemetry spans go: `--otlp-endpoint`, or the SDK's standard variables.

Kept apart from `llmreel.metering.otel`, which imports the OpenTelemetry SDK (about a second
on a cold start): the engine asks here first, and imports the exporter only when one is set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

__all__ = ["ENV_ENDPOINT", "ENV_TRACES_ENDPOINT", "display", "traces_endpoint"]

TRACES_PATH: Final = "/v1/traces"
ENV_TRACES_ENDPOINT: Final = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
ENV_ENDPOINT: Final = "OTEL_EXPORTER_OTLP_ENDPOINT"


def traces_endpoint(option: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """Where spans go, or None when export is off.

    `option` (`--otlp-endpoint`) is a receiver's base URL (`http://localhost:4318`,
    `https://cloud.langfuse.com/api/public/otel`), to which `/v1/traces` is added, or the full
    traces URL (ending in `/v1/traces`). Without it, the SDK's standard variables decide:
    `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as it stands, or `OTEL_EXPORTER_OTLP_ENDPOINT` plus
    `/v1/traces`. Raises ValueError for a URL that is not http(s).
    """
    option = option.strip()
    if option:
        parts = urlsplit(option)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"{option!r} is not an http(s) URL; pass the receiver's OTLP/HTTP address, "
                "e.g. http://127.0.0.1:4318"
            )
        path = parts.path.rstrip("/")
        return option if path.endswith(TRACES_PATH) else option.rstrip("/") + TRACES_PATH
    if environ.get(ENV_TRACES_ENDPOINT):
        return environ[ENV_TRACES_ENDPOINT]
    if environ.get(ENV_ENDPOINT):
        return environ[ENV_ENDPOINT].rstrip("/") + TRACES_PATH
    return None


def display(url: str) -> str:
    """`url` without any user name or password, for logs."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=netloc, query="").geturl()
