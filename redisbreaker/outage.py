"""What happens while Redis is unreachable, and logging about it without flooding."""

from __future__ import annotations

import logging
import threading
import time

from redisbreaker.errors import CircuitOpenError

logger = logging.getLogger("redisbreaker")


class BreakerUnavailableError(CircuitOpenError):
    """Redis is unreachable and the breaker's policy is ``fail_closed``.

    A subclass of :class:`CircuitOpenError`, so code (and the Celery integration)
    that handles an open breaker handles this the same way: the task is retried later.
    """

    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(name, retry_after, state="unavailable")


class RateLimitedLog:
    """Log at most one message per ``interval`` seconds per key; count the rest."""

    def __init__(self, interval: float = 30.0) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        self._emit(logging.WARNING, key, message, args)

    def error(self, key: str, message: str, *args: object) -> None:
        self._emit(logging.ERROR, key, message, args)

    def _emit(self, level: int, key: str, message: str, args: tuple[object, ...]) -> None:
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._last.get(key, (-1e18, 0))
            if now - last < self.interval:
                self._last[key] = (last, suppressed + 1)
                return
            self._last[key] = (now, 0)
        if suppressed:
            message += " (%d similar messages suppressed)"
            args = (*args, suppressed)
        logger.log(level, message, *args)


rate_limited = RateLimitedLog()
