"""A breaker's settings: small policy objects, validated once, at construction.

Every error names the option and the bad value. The settings travel to Redis with
every script call (``BreakerOptions.argv``), so the scripts keep no configuration
of their own; processes sharing a breaker should use the same settings.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeAlias, TypedDict

from redisbreaker.errors import ConfigurationError
from redisbreaker.state import Code

ExceptionMatcher: TypeAlias = type[BaseException] | Callable[[BaseException], bool]


class OutagePolicy(StrEnum):
    """What a breaker does while Redis cannot be reached."""

    FAIL_OPEN = "fail_open"  # calls run; outcomes are not recorded
    FAIL_CLOSED = "fail_closed"  # calls are refused with BreakerUnavailableError
    LOCAL = "local"  # an in-process breaker with the same settings stands in


@dataclass(frozen=True, slots=True)
class CountWindow:
    """Judge the failure rate over the last ``size`` calls."""

    size: int

    def __post_init__(self) -> None:
        _positive_int("CountWindow.size", self.size, maximum=100_000)


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Judge the failure rate over the calls of the last ``seconds`` seconds."""

    seconds: int

    def __post_init__(self) -> None:
        _positive_int("TimeWindow.seconds", self.seconds, maximum=86_400)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Grow the open period on repeated trips: ``reset_timeout * multiplier**(trips-1)``,
    capped at ``max``, then lengthened by up to ``jitter`` (a fraction) at random."""

    multiplier: float = 2.0
    max: float = 600.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        _number("Backoff.multiplier", self.multiplier, low=1.0, high=100.0)
        _number("Backoff.max", self.max, low=0.001, high=30 * 86_400.0)
        _number("Backoff.jitter", self.jitter, low=0.0, high=1.0)


Window: TypeAlias = CountWindow | TimeWindow


def _positive_int(name: str, value: object, *, maximum: int = 2**31) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ConfigurationError(f"{name} must be an int from 1 to {maximum}, got {value!r}")
    return value


def _number(name: str, value: object, *, low: float, high: float, low_open: bool = False) -> float:
    v = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    if v is None or not (math.isfinite(v) and (v > low if low_open else v >= low) and v <= high):
        bracket = "(" if low_open else "["
        raise ConfigurationError(
            f"{name} must be a number in {bracket}{low}, {high}], got {value!r}"
        )
    return v


def _matchers(name: str, value: object) -> tuple[ExceptionMatcher, ...]:
    items: Iterable[object]
    if isinstance(value, type) or callable(value):
        items = (value,)
    elif isinstance(value, list | tuple | set | frozenset):
        items = value
    else:
        raise ConfigurationError(
            f"{name} must be an exception type, a predicate, or a sequence of them; got {value!r}"
        )
    out: list[ExceptionMatcher] = []
    for item in items:
        if (isinstance(item, type) and issubclass(item, BaseException)) or (
            callable(item) and not isinstance(item, type)
        ):
            out.append(item)
        else:
            raise ConfigurationError(
                f"{name} entries must be exception types or predicates, got {item!r}"
            )
    return tuple(out)


def _matches(matchers: tuple[ExceptionMatcher, ...], exc: BaseException) -> bool:
    for m in matchers:
        if isinstance(m, type):
            if isinstance(exc, m):
                return True
        elif m(exc):
            return True
    return False


@dataclass(frozen=True)
class BreakerOptions:
    """All of a breaker's settings. See docs/breaker.md's option table for each one."""

    fail_max: int | None = 5
    window: Window | None = None
    minimum_calls: int = 10
    failure_rate_threshold: float | None = None
    slow_call_duration: float | None = None
    slow_call_rate_threshold: float | None = None
    reset_timeout: float = 30.0
    backoff: Backoff | None = None
    half_open_permits: int = 1
    trial_lease: float = 60.0
    success_threshold: int = 1
    record: tuple[ExceptionMatcher, ...] = (Exception,)
    ignore: tuple[ExceptionMatcher, ...] = ()
    on_outage: OutagePolicy = OutagePolicy.FAIL_OPEN
    sync_interval: float = 1.0
    max_pending: int = 10_000
    ttl: float = 7 * 86_400.0
    background_sync: bool = True

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.fail_max is not None:
            _positive_int("fail_max", self.fail_max)
        if self.window is not None and not isinstance(self.window, CountWindow | TimeWindow):
            raise ConfigurationError(
                f"window must be CountWindow(size) or TimeWindow(seconds), got {self.window!r}"
            )
        _positive_int("minimum_calls", self.minimum_calls)
        if isinstance(self.window, CountWindow) and self.window.size < self.minimum_calls:
            # As resilience4j does: a window of N calls can never hold more than N, so
            # the rate is judged once the window is full.
            set_(self, "minimum_calls", self.window.size)
        for name in ("failure_rate_threshold", "slow_call_rate_threshold"):
            value = getattr(self, name)
            if value is not None:
                _number(name, value, low=0.0, high=1.0, low_open=True)
                if self.window is None:
                    raise ConfigurationError(
                        f"{name}={value!r} needs a window=CountWindow(...) or TimeWindow(...)"
                    )
        if self.slow_call_duration is not None:
            _number("slow_call_duration", self.slow_call_duration, low=0.0, high=86_400.0,
                    low_open=True)  # fmt: skip
        if (self.slow_call_rate_threshold is None) != (self.slow_call_duration is None):
            raise ConfigurationError(
                "slow_call_duration and slow_call_rate_threshold go together; got "
                f"slow_call_duration={self.slow_call_duration!r}, "
                f"slow_call_rate_threshold={self.slow_call_rate_threshold!r}"
            )
        if self.window is not None and (
            self.failure_rate_threshold is None and self.slow_call_rate_threshold is None
        ):
            raise ConfigurationError(
                f"window={self.window!r} needs failure_rate_threshold or slow_call_rate_threshold"
            )
        if self.fail_max is None and self.window is None:
            raise ConfigurationError("no trip policy: set fail_max, or a window with a threshold")
        _number("reset_timeout", self.reset_timeout, low=0.0, high=30 * 86_400.0, low_open=True)
        if self.backoff is not None:
            if not isinstance(self.backoff, Backoff):
                raise ConfigurationError(f"backoff must be a Backoff(...), got {self.backoff!r}")
            if self.backoff.max < self.reset_timeout:
                raise ConfigurationError(
                    f"Backoff.max={self.backoff.max!r} is below "
                    f"reset_timeout={self.reset_timeout!r}"
                )
        _positive_int("half_open_permits", self.half_open_permits, maximum=10_000)
        _number("trial_lease", self.trial_lease, low=0.0, high=86_400.0, low_open=True)
        _positive_int("success_threshold", self.success_threshold, maximum=10_000)
        set_(self, "record", _matchers("record", self.record))
        set_(self, "ignore", _matchers("ignore", self.ignore))
        set_(self, "on_outage", outage_policy(self.on_outage))
        _number("sync_interval", self.sync_interval, low=0.0, high=3600.0, low_open=True)
        _positive_int("max_pending", self.max_pending, maximum=10_000_000)
        _number("ttl", self.ttl, low=1.0, high=365 * 86_400.0)
        if not isinstance(self.background_sync, bool):
            raise ConfigurationError(
                f"background_sync must be True or False, got {self.background_sync!r}"
            )
        longest = self.backoff.max * 2 if self.backoff else self.reset_timeout
        if self.ttl < longest:
            raise ConfigurationError(
                f"ttl={self.ttl!r} is shorter than the longest open period ({longest}s)"
            )

    def outcome(self, exc: BaseException | None, duration: float) -> Code:
        """The outcome code a call's result maps to (see ``lua/lib/outcomes.lua``).

        As in pybreaker, purgatory and resilience4j, an exception that ``record`` does
        not match counts as a success; one that ``ignore`` matches counts as nothing.
        An interruption that is not an ``Exception`` (cancellation, KeyboardInterrupt,
        SystemExit) says nothing about the downstream: it counts as nothing too, so a
        cancelled half-open trial never closes the breaker.
        """
        slow = self.slow_call_duration is not None and duration > self.slow_call_duration
        if exc is not None:
            if _matches(self.ignore, exc):
                return Code.IGNORED
            if _matches(self.record, exc):
                return Code.SLOW_FAILURE if slow else Code.FAILURE
            if not isinstance(exc, Exception):
                return Code.IGNORED
        return Code.SLOW_SUCCESS if slow else Code.SUCCESS

    @functools.cached_property
    def static_argv(self) -> tuple[bytes, ...]:
        """The settings as ``lua/lib/breaker.lua`` reads them from ARGV[5..18], encoded
        once: the hot path then sends ready-made bytes."""
        w = self.window
        kind, size = (1, w.size) if isinstance(w, CountWindow) else (2, w.seconds) if w else (0, 0)
        b = self.backoff
        fields = [
            self.fail_max or 0,
            kind,
            size,
            self.minimum_calls,
            _basis_points(self.failure_rate_threshold),
            _basis_points(self.slow_call_rate_threshold),
            _ms(self.reset_timeout),
            repr(b.multiplier) if b else "1",
            _ms(b.max) if b else _ms(self.reset_timeout),
            repr(b.jitter) if b else "0",
            self.half_open_permits,
            _ms(self.trial_lease),
            self.success_threshold,
            _ms(self.ttl),
        ]
        return tuple(str(f).encode() for f in fields)

    @functools.cached_property
    def jittered(self) -> bool:
        """Whether an open period is lengthened at random: only then does a script call
        need the random number it carries (``repr`` of a float is the dearest part of
        building a call's arguments)."""
        return bool(self.backoff and self.backoff.jitter)

    @functools.cached_property
    def settings_text(self) -> str:
        """The settings every process sharing this breaker must agree on, as one string:
        stored with the state, so a process with other settings is noticed."""
        return ",".join(f.decode() for f in self.static_argv[:14])

    def fingerprint(self, settings_text: str | None = None) -> str:
        """A short stable id of ``settings_text`` (these options' by default)."""
        if settings_text is None:
            return self.settings_fingerprint
        return hashlib.sha1(settings_text.encode(), usedforsecurity=False).hexdigest()[:12]

    @functools.cached_property
    def settings_fingerprint(self) -> str:
        """:meth:`fingerprint` of these options' settings, computed once: every script
        call names the settings by it (the Redis Functions library caches them)."""
        return hashlib.sha1(self.settings_text.encode(), usedforsecurity=False).hexdigest()[:12]

    def settings_difference(self, other: str) -> str:
        """Name each shared setting where ``other`` (a stored settings text) differs."""
        mine, theirs = self.settings_text.split(","), other.split(",")
        if len(theirs) != len(mine):
            return f"unreadable settings {other[:100]!r}"
        return ", ".join(
            f"{name}: here {a}, there {b}"
            for name, a, b in zip(_SHARED_NAMES, mine, theirs, strict=True)
            if a != b
        )

    def argv(
        self, *, clock: str, rand: float, channel: str, event_prefix: bytes, who: str = "",
        note: str = "", refresh_ttl: bool = True,
    ) -> list[Any]:  # fmt: skip
        """ARGV[1..OP-1] of every breaker script, in the order ``lua/lib/breaker.lua``
        reads: a random number for the backoff's jitter ("0" when there is none), the
        settings as their fingerprint and their text (a shell that knows
        Redis has them sends '' instead: ``SETTINGS_TEXT`` is their index), ``who``
        calls, ``note`` is the last failure it reports (or an operator's reason), and
        whether the call refreshes the state's TTL (else it keeps it when it can)."""
        return [
            clock, repr(rand) if self.jittered else "0", channel, event_prefix,
            self.settings_fingerprint,
            self.settings_text, who, note, "1" if refresh_ttl else "",
        ]  # fmt: skip


# The index of the settings text in a breaker script's ARGV (0-based): see argv().
SETTINGS_TEXT = 5


def outage_policy(value: object, name: str = "on_outage") -> OutagePolicy:
    """``value`` (an :class:`OutagePolicy` or its name) as a policy; the error names it."""
    try:
        return OutagePolicy(value)  # type: ignore[arg-type]  # ValueError for a non-str too
    except ValueError:
        choices = [p.value for p in OutagePolicy]
        raise ConfigurationError(f"{name} must be one of {choices}, got {value!r}") from None


def open_seconds(value: object, name: str = "seconds") -> float:
    """Validate how long an operator opens a breaker (or pauses a queue) for."""
    return _number(name, value, low=0.001, high=MAX_OPEN_SECONDS)


MAX_OPEN_SECONDS = 365 * 86_400.0

# The shared settings in the order of ``static_argv``, as a person would name them.
_SHARED_NAMES = (
    "fail_max", "window kind", "window size", "minimum_calls", "failure_rate_threshold",
    "slow_call_rate_threshold", "reset_timeout", "backoff.multiplier", "backoff.max",
    "backoff.jitter", "half_open_permits", "trial_lease", "success_threshold", "ttl",
)  # fmt: skip


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _basis_points(fraction: float | None) -> int:
    return 0 if fraction is None else max(1, round(fraction * 10_000))


class BreakerSettings(TypedDict, total=False):
    """What a caller may pass as a breaker's options (``SharedBreaker(name, **settings)``,
    ``shared_breaker(**settings)``): the fields of :class:`BreakerOptions`, with the
    input each accepts. (Python's typing cannot derive a TypedDict from a dataclass;
    ``tests/unit/test_options.py`` fails if the two lists ever differ.)"""

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
    background_sync: bool


_OPTION_NAMES = tuple(f.name for f in dataclasses.fields(BreakerOptions))


def options_from(settings: Mapping[str, Any]) -> BreakerOptions:
    """``BreakerOptions(**settings)``, with an unknown name reported as such."""
    unknown = sorted(set(settings) - set(_OPTION_NAMES))
    if unknown:
        raise ConfigurationError(
            f"unknown breaker option {unknown[0]!r}; the options are: {', '.join(_OPTION_NAMES)}"
        )
    return BreakerOptions(**settings)


def _as_written(text: str) -> float:
    return int(text) if text.lstrip("-").isdigit() else float(text)


def options_from_stored(text: str) -> BreakerOptions:
    """The options whose shared settings are ``text`` (what the scripts store with a
    breaker's state, :attr:`BreakerOptions.settings_text`): how operators act on a
    breaker without knowing its settings. Per-process options keep their defaults
    (``slow_call_duration`` is a stand-in when a slow-call rate is set)."""
    parts = text.split(",")
    if len(parts) != len(_SHARED_NAMES):
        raise ConfigurationError(f"unreadable stored settings {text[:100]!r}")
    try:
        fail_max, kind, size, min_calls, rate_bp, slow_bp, reset_ms = (int(x) for x in parts[:7])
        # (int or float as written: the settings text holds their repr)
        mult, max_ms, jitter = _as_written(parts[7]), int(parts[8]), _as_written(parts[9])
        permits, lease_ms, succ, ttl_ms = (int(x) for x in parts[10:])
    except ValueError:
        raise ConfigurationError(f"unreadable stored settings {text[:100]!r}") from None
    window: Window | None = (
        CountWindow(size) if kind == 1 else TimeWindow(size) if kind == 2 else None
    )
    common: dict[str, Any] = {
        "fail_max": fail_max or None,
        "window": window,
        "minimum_calls": min_calls,
        "failure_rate_threshold": rate_bp / 10_000 if rate_bp else None,
        "slow_call_duration": 1.0 if slow_bp else None,
        "slow_call_rate_threshold": slow_bp / 10_000 if slow_bp else None,
        "reset_timeout": reset_ms / 1000,
        "half_open_permits": permits,
        "trial_lease": lease_ms / 1000,
        "success_threshold": succ,
        "ttl": ttl_ms / 1000,
    }
    # Without a backoff the settings say multiplier 1, jitter 0, max = reset_timeout;
    # a Backoff may say the same in other words: take whichever writes the text back.
    for backoff in (None, Backoff(multiplier=mult, max=max_ms / 1000, jitter=jitter)):
        try:
            options = BreakerOptions(**common, backoff=backoff)
        except ConfigurationError:
            continue
        if options.settings_text == text:
            return options
    raise ConfigurationError(f"stored settings {text[:100]!r} do not round-trip")
