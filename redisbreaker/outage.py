"""What happens while Redis is unreachable, and logging about it without flooding."""

from __future__ import annotations

import logging
import re
import ssl
import threading
import time
from enum import Enum

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


class Trouble(Enum):
    """What kind of failure a Redis error is: only ``OUTAGE`` is an outage.

    An outage (Redis down, hung, loading, failing over) is handled by the outage policy
    and probed again later. Everything else Redis answers is a misconfiguration or a
    bug: it is logged at ERROR with what to fix, and never mistaken for an outage.
    The value is how messages name it.
    """

    OUTAGE = "Redis unreachable"
    TLS = "TLS handshake failed (certificate error), not an outage"
    AUTH = "Redis refused the credentials, not an outage"
    PERMISSION = "the Redis user lacks a permission, not an outage"
    OUT_OF_MEMORY = "Redis is out of memory, not an outage"
    ERROR = "Redis error, not an outage"

    @property
    def hint(self) -> str:
        """What to do about it (``""`` when there is nothing general to say)."""
        return _HINTS.get(self, "")


_HINTS = {
    Trouble.TLS: "give the CA with ?ssl_ca_certs=/path/ca.pem (see docs/redis.md, TLS)",
    Trouble.PERMISSION: "grant it to the user (see docs/redis.md, the ACL line)",
    Trouble.OUT_OF_MEMORY: (
        "maxmemory is reached and Redis refuses writes; raise it or give the library its own "
        "Redis (see docs/redis.md, memory)"
    ),
}

# Errors that mean "Redis cannot serve us right now": the outage policy applies.
_OUTAGE_TYPES: tuple[type[BaseException], ...] = (
    rx.ConnectionError,
    rx.TimeoutError,
    OSError,  # socket errors, and the builtin TimeoutError
    rx.ReadOnlyError,  # a failover turned our server into a replica
    rx.ClusterDownError,
    rx.TryAgainError,
    rx.SlotNotCoveredError,
)
_SCRIPT_DENIED = "user executing the script can't run this command"
_AUTH_TYPES: tuple[type[BaseException], ...] = (rx.AuthenticationError, rx.AuthorizationError)


def classify(exc: BaseException) -> Trouble:
    """What kind of failure ``exc`` (or the redis-py error it wraps) is."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    if _tls_failure(cause):
        return Trouble.TLS
    if isinstance(cause, _AUTH_TYPES):
        return Trouble.AUTH
    if isinstance(cause, rx.NoPermissionError) or str(cause).startswith("NOPERM"):
        return Trouble.PERMISSION
    if isinstance(cause, rx.ResponseError) and _SCRIPT_DENIED in str(cause):
        return Trouble.PERMISSION  # a command inside a script (Redis does not name it)
    if isinstance(cause, rx.OutOfMemoryError) or str(cause).startswith("OOM "):
        return Trouble.OUT_OF_MEMORY
    if isinstance(cause, _OUTAGE_TYPES):
        return Trouble.OUTAGE
    if isinstance(cause, rx.ResponseError):
        # A script running past busy-script-time: Redis answers nothing else meanwhile.
        busy = str(cause).startswith(("BUSY ", "LOADING ", "MASTERDOWN "))
        return Trouble.OUTAGE if busy else Trouble.ERROR
    if isinstance(cause, rx.RedisClusterException) and "connect" in str(cause):
        return Trouble.OUTAGE  # no node reachable (not a cross-slot misuse)
    return Trouble.ERROR


# A connection cut mid-handshake (a server going down) is an outage, not a TLS problem.
_TLS_TRANSIENT = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def _tls_failure(exc: BaseException) -> bool:
    """A certificate or protocol failure in the TLS handshake: retrying cannot fix it.
    (redis-py raises ConnectionError with the ssl error as its context.)"""
    if not isinstance(exc, rx.ConnectionError | OSError):
        return False
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            break
        if isinstance(seen, ssl.SSLError) and not isinstance(seen, _TLS_TRANSIENT):
            return True  # a bad certificate, or TLS spoken to a plain port
        if "CERTIFICATE_VERIFY" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` (or the redis-py error it wraps) means Redis is unreachable."""
    return classify(exc) is Trouble.OUTAGE


_CREDENTIALS = re.compile(r"(\w+://)[^/@\s]*@")


def describe(exc: BaseException) -> str:
    """``ExceptionClass: message`` of ``exc``'s underlying error, without credentials."""
    detail = getattr(exc, "detail", None)
    if isinstance(detail, str):
        return detail
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    text = _CREDENTIALS.sub(r"\1***@", str(cause).splitlines()[0] if str(cause) else "")
    return f"{type(cause).__name__}: {text[:200]}" if text else type(cause).__name__


def diagnose(exc: BaseException) -> str:
    """:func:`describe` preceded by what kind of failure it is, and followed by what to
    do about it when that is known: the text of a :class:`StorageError`."""
    trouble = classify(exc)
    hint = f"; {trouble.hint}" if trouble.hint else ""
    return f"{trouble.value}: {describe(exc)}{hint}"
