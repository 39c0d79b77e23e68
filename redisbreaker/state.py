"""The breaker's states and the values scripts return, as plain immutable data."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from redisbreaker import stored


class State(StrEnum):
    """A breaker's state, shared by every worker on every host."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"  # an operator said so; stays until reset()
    DISABLED = "disabled"  # an operator said so: every call passes, nothing is recorded


class Code(StrEnum):
    """What one finished call counts as: the outcome codes the scripts read
    (``lua/lib/outcomes.lua``)."""

    SUCCESS = "0"
    FAILURE = "1"
    SLOW_SUCCESS = "2"
    SLOW_FAILURE = "3"
    IGNORED = "x"  # counts nothing (hands a half-open permit back)
    REFUSED = "n"  # refused while open: only counted in the totals

    @property
    def failed(self) -> bool:
        return self in (Code.FAILURE, Code.SLOW_FAILURE)


class Verdict(StrEnum):
    """What an admit script decided about one call."""

    NONE = ""
    ALLOW = "allow"
    TRIAL = "trial"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class Totals:
    """Fleet-wide totals of one breaker, kept in Redis whatever the state or generation."""

    successful: int = 0
    failed: int = 0
    slow: int = 0
    ignored: int = 0
    not_permitted: int = 0  # refused while open (counted where refused, flushed later)
    trips: int = 0  # automatic trips ever
    open_ms: int = 0  # time spent open (or forced open)


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a breaker is in its state: the rule (``consecutive``, ``failure_rate``,
    ``slow_call_rate``, ``trial_failed``, ``recovered`` or ``operator``), a text for
    people, the failure that made it (``Class: message``; "" for operators), who made
    it (``host:pid`` or ``user@host``) and when (ms since the epoch, Redis clock)."""

    rule: str = ""
    text: str = ""
    error: str = ""
    by: str = ""
    at_ms: int = 0


# Not frozen, unlike the public records here: one is built from every script reply (every
# recorded failure), and a frozen dataclass's __init__ cost that path 1.2 µs more. A view
# is replaced, never changed.
@dataclass(slots=True)
class View:
    """One breaker script's reply: the shared state after the script ran."""

    state: State
    generation: int
    wait_ms: int
    consecutive_failures: int
    calls: int
    failures: int
    slow_calls: int
    half_open_successes: int
    trips: int
    transitioned_from: State | None
    verdict: Verdict
    other_settings: str = ""  # the stored settings, when another process's differ from ours
    transition_reason: str = ""  # why the transition this call made happened ("" if none)
    totals: Totals = Totals()
    reason: Reason | None = None  # only in a snapshot's reply

    @classmethod
    def parse(cls, reply: Any) -> View:
        """Parse the reply array built by ``reply()`` in ``lua/lib/breaker.lua``: the
        stored state (``lua/lib/codec.lua``), wait_ms, the state it left, the verdict,
        other settings, why; a snapshot's reply adds the time open so far, and its reason
        is read from the state. A recorded outcome with nothing else to say replies with
        the stored state alone."""
        # (On every recorded failure: written for speed.)
        snapshot, blob = False, reply
        if isinstance(blob, bytes | str):  # the state alone: nothing else to say
            wait_ms, old, verdict, other, why = 0, b"", b"", b"", b""
        else:
            blob, wait_ms, old, verdict, other, why = reply[:6]
            snapshot = len(reply) > 6
        try:
            h = stored.HEAD.unpack_from(blob)
            state = _STATE_CODES[h[1]]
        except (TypeError, struct.error, KeyError):
            if isinstance(blob, str):
                raise ValueError(
                    "the Redis client decodes responses (decode_responses=True); a breaker "
                    "needs a client that returns bytes"
                ) from None
            raise ValueError(f"not a breaker state: {blob!r:.80}") from None
        # stored.NUMBERS, in order (tests/unit/test_stored.py checks the names)
        (_, _, gen, consec, n_ok, n_fail, n_slow, n_ign, n_np, _, _,
         _, trips, hs, n, wf, ws, _, _, _, _, _, n_trips, open_ms, _, _) = h  # fmt: skip
        reason = None
        if snapshot:
            s = stored.decode(blob)
            reason = Reason(s["why"], s["why_text"], s["why_err"], s["why_by"], s["why_at"])
            open_ms = int(reply[6])
        return cls(
            state, gen, int(wait_ms), consec, n, wf, ws, hs, trips,
            _STATES[old] if old else None,
            _VERDICTS[verdict],
            text_of(other) if other else "",
            text_of(why) if why else "",
            Totals(n_ok, n_fail, n_slow, n_ign, n_np, n_trips, open_ms),
            reason,
        )  # fmt: skip


def text_of(value: object) -> str:
    """A value as Redis returned it (``bytes``, or ``str`` with decoding on) as text."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


_STATES: dict[Any, State] = {**{s.value: s for s in State}, **{s.value.encode(): s for s in State}}
_STATE_CODES = {i + 1: State(name) for i, name in enumerate(stored.STATES)}
_VERDICTS: dict[Any, Verdict] = {
    **{v.value: v for v in Verdict},
    **{v.value.encode(): v for v in Verdict},
}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The shared state of a breaker, as ``breaker.snapshot()`` reports it.

    Counts are those of the current window (or since the last transition when no
    window is configured). ``retry_after`` is in seconds by the Redis server's clock;
    it is ``0.0`` unless the breaker is open.
    """

    name: str
    state: State
    generation: int
    calls: int
    failures: int
    successes: int
    slow_calls: int
    consecutive_failures: int
    retry_after: float
    trips: int
    fingerprint: str = ""  # of the settings stored with the state (the last writer's)
    errors: int = 0  # Redis errors that were not outages, seen by this process's object
    last_error: str | None = None  # the latest of them, ``Class: message``
    totals: Totals = Totals()  # fleet-wide call counts, trips and time open
    reason: Reason = Reason()  # why it is in this state (from snapshot(); else empty)
    # State loss (docs/redis.md): times this process found this breaker's state gone
    # from Redis while it was open or paused; and when Redis was last found to have
    # lost the whole data set under the prefix (server ms, 0: never; from snapshot()).
    state_lost: int = 0
    data_lost_at_ms: int = 0

    @classmethod
    def from_view(
        cls, name: str, view: View, *, fingerprint: str = "", errors: int = 0,
        last_error: str | None = None, state_lost: int = 0, data_lost_at_ms: int = 0,
    ) -> Snapshot:  # fmt: skip
        return cls(
            name=name,
            state=view.state,
            generation=view.generation,
            calls=view.calls,
            failures=view.failures,
            successes=view.calls - view.failures,
            slow_calls=view.slow_calls,
            consecutive_failures=view.consecutive_failures,
            retry_after=view.wait_ms / 1000.0,
            trips=view.trips,
            fingerprint=fingerprint,
            errors=errors,
            last_error=last_error,
            totals=view.totals,
            reason=view.reason or Reason(),
            state_lost=state_lost,
            data_lost_at_ms=data_lost_at_ms,
        )


@dataclass(frozen=True, slots=True)
class Transition:
    """A state change, as listeners and subscribers receive it."""

    name: str
    old: State
    new: State
    generation: int
    retry_after: float  # seconds the new state stays open (0.0 unless OPEN)
    origin: str  # the id of the process whose script made the change
