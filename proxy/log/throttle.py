"""At most one error line a minute from code that may fail on every exchange (a full disk)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

__all__ = ["ERROR_REPORT_INTERVAL_S", "ThrottledLog"]

ERROR_REPORT_INTERVAL_S: Final = 60.0


class ThrottledLog:
    """Logs an error unless one was logged less than `interval_s` ago.

    A sink that cannot write fails once per exchange; the proxy's own log must stay readable.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = ERROR_REPORT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._last = -interval_s

    def error(self, message: str, *args: object) -> None:
        now = self._clock()
        if now - self._last >= self._interval_s:
            self._last = now
            self._logger.error(message, *args)
