"""What happens while Redis is unreachable, and logging about it without flooding."""

from __future__ import annotations

import logging
import re
import threading
import time

import redis.exceptions as rx

logger = logging.getLogger("redisbreaker")


class RateLimitedLog:
    """Log at most one message per ``interval`` seconds per key; count the rest."""

    def __init__(self, interval: float = 30.0) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, int]] = {}

    def reset(self) -> None:
        """Forget what was logged (the next message of each key is logged at once)."""
        with self._lock:
            self._last.clear()

    def warning(self, key: str, message: str, *args: object, interval: float | None = None) -> None:
        self._emit(logging.WARNING, key, message, args, interval)

    def error(self, key: str, message: str, *args: object, interval: float | None = None) -> None:
        self._emit(logging.ERROR, key, message, args, interval)

    def _emit(
        self, level: int, key: str, message: str, args: tuple[object, ...], interval: float | None
    ) -> None:
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._last.get(key, (-1e18, 0))
            if now - last < (self.interval if interval is None else interval):
                self._last[key] = (last, suppressed + 1)
                return
            self._last[key] = (now, 0)
        if suppressed:
            message += " (%d similar messages suppressed)"
            args = (*args, suppressed)
        logger.log(level, message, *args)


rate_limited = RateLimitedLog()


# Errors that mean "Redis cannot serve us right now" (down, hung, loading, failing over):
# the outage policy applies and Redis is probed again later. Anything else Redis answers
# (a Lua error, CROSSSLOT, NOPERM, OOM, a wrong password) is a bug or a misconfiguration:
# it is logged at ERROR and never mistaken for an outage.
_OUTAGE_TYPES: tuple[type[BaseException], ...] = (
    rx.ConnectionError,
    rx.TimeoutError,
    OSError,  # socket errors, and the builtin TimeoutError
    rx.ReadOnlyError,  # a failover turned our server into a replica
    rx.ClusterDownError,
    rx.TryAgainError,
    rx.SlotNotCoveredError,
)
_NOT_OUTAGE_TYPES: tuple[type[BaseException], ...] = (
    rx.AuthenticationError,
    rx.AuthorizationError,
)


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` (or the redis-py error it wraps) means Redis is unreachable."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    if isinstance(cause, _NOT_OUTAGE_TYPES):
        return False
    if isinstance(cause, _OUTAGE_TYPES):
        return True
    if isinstance(cause, rx.ResponseError):
        # A script running past busy-script-time: Redis answers nothing else meanwhile.
        return str(cause).startswith(("BUSY ", "LOADING ", "MASTERDOWN "))
    if isinstance(cause, rx.RedisClusterException):
        return "connect" in str(cause)  # no node reachable (not a cross-slot misuse)
    return False


_CREDENTIALS = re.compile(r"(\w+://)[^/@\s]*@")


def describe(exc: BaseException) -> str:
    """``ExceptionClass: message`` of ``exc``'s underlying error, without credentials."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    text = _CREDENTIALS.sub(r"\1***@", str(cause).splitlines()[0] if str(cause) else "")
    return f"{type(cause).__name__}: {text[:200]}" if text else type(cause).__name__
