"""Serving `/metrics` for Prometheus from a registry, on an address the user chose."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger("llmreel")


class MetricsServer:
    """prometheus-client's HTTP exporter, started at most once; a busy port is an error to
    report, not a reason to stop proxying."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.error: str | None = None
        self._server: Any = None

    @property
    def port(self) -> int | None:
        return None if self._server is None else int(self._server.server_port)

    def start(self, host: str, port: int) -> None:
        if not port or self._server is not None:
            return
        try:
            # start_http_server binds 0.0.0.0 unless told otherwise.
            self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            self.error = f"cannot serve metrics on {host}:{port}: {exc}"
            log.error("%s; pick another --metrics-port (0 turns it off)", self.error)
        else:
            log.info("metrics on http://%s:%d/metrics", host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
