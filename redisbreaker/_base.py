"""What the sync and asyncio breakers share: construction, listeners, event handling."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, TypedDict, Unpack

import redis

from redisbreaker import config
from redisbreaker.core import BreakerCore, decode_event, monotonic
from redisbreaker.errors import ConfigurationError, StorageError
from redisbreaker.keys import KeySpace, validate_name
from redisbreaker.options import (
    Backoff,
    BreakerOptions,
    ExceptionMatcher,
    OutagePolicy,
    Window,
)
from redisbreaker.state import State, Transition

logger = logging.getLogger("redisbreaker")

StateListener = Callable[[State, State], None]
TransitionListener = Callable[[Transition], None]

# Redis errors that mean "the store is unreachable or refused": the outage policy applies.
STORAGE_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OSError)


class BreakerSettings(TypedDict, total=False):
    """Every tunable of a breaker; see :class:`redisbreaker.options.BreakerOptions`."""

    fail_max: int | None
    window: Window | None
    minimum_calls: int
    failure_rate_threshold: float | None
    slow_call_duration: float | None
    slow_call_rate_threshold: float | None
    reset_timeout: float
    backoff: Backoff | None
    half_open_permits: int
    trial_lease: float
    success_threshold: int
    record: ExceptionMatcher | Iterable[ExceptionMatcher]
    ignore: ExceptionMatcher | Iterable[ExceptionMatcher]
    on_outage: OutagePolicy | str
    sync_interval: float
    max_pending: int
    ttl: float


KIND = "cb"


class BreakerBase:
    """Name, settings, keys, cached view and listeners of one breaker in one process."""

    def __init__(
        self,
        name: str | bytes,
        *,
        client: Any = None,
        prefix: str | None = None,
        on_state_change: StateListener | None = None,
        **settings: Unpack[BreakerSettings],
    ) -> None:
        validate_name("breaker", name)
        if on_state_change is not None and not callable(on_state_change):
            raise ConfigurationError(f"on_state_change must be callable, got {on_state_change!r}")
        self.options = BreakerOptions(**settings)  # type: ignore[arg-type]
        self.name = name if isinstance(name, str) else name.decode("utf-8", "backslashreplace")
        keys = KeySpace.of(prefix if prefix is not None else config.default_prefix(), KIND, name)
        self._core = BreakerCore(self.name, self.options, keys)
        self._client = client
        self._on_state_change = on_state_change
        self._subscribers: list[TransitionListener] = []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.options.on_outage.value}>"

    @property
    def keys(self) -> list[str]:
        """The Redis keys of this breaker (they share one hash tag)."""
        return list(self._core.key_list)

    def subscribe(self, callback: TransitionListener) -> None:
        """Call ``callback(transition)`` for each transition of this breaker that this
        process sees on pub/sub, wherever it was made (including here)."""
        if not callable(callback):
            raise ConfigurationError(f"subscribe() needs a callable, got {callback!r}")
        self._subscribers.append(callback)

    # The pub/sub hub calls these (see redisbreaker/events.py).
    def on_message(self, message: Transition) -> None:
        self._core.on_event(message, monotonic())
        for callback in self._subscribers:
            _guarded(callback, message)

    def on_reset(self) -> None:
        self._core.invalidate()

    def _notify(self, transition: Transition | None) -> None:
        if transition is not None and self._on_state_change is not None:
            _guarded(self._on_state_change, transition.old, transition.new)

    def _storage_error(self, exc: BaseException) -> StorageError:
        if isinstance(exc, redis.ResponseError):
            return self._core.wrap_response_error(exc)
        return StorageError(f"breaker {self.name!r}: Redis unreachable: {type(exc).__name__}")


def _guarded(fn: Callable[..., object], *args: object) -> None:
    try:
        fn(*args)
    except Exception:
        logger.exception("redisbreaker listener %r raised", fn)


def decode(payload: bytes) -> tuple[str, Transition] | None:
    return decode_event(payload)
