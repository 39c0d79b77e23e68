"""The breaker's states and the values scripts return, as plain immutable data."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    """A breaker's state, shared by every worker on every host."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"  # an operator said so; stays until reset()
    DISABLED = "disabled"  # an operator said so: every call passes, nothing is recorded


class Verdict(StrEnum):
    """What an admit script decided about one call."""

    NONE = ""
    ALLOW = "allow"
    TRIAL = "trial"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
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

    @classmethod
    def parse(cls, reply: list[object]) -> View:
        """Parse the reply array built by ``reply()`` in ``lua/lib/breaker.lua``."""

        def text(v: object) -> str:
            return v.decode() if isinstance(v, bytes) else str(v)

        def num(v: object) -> int:
            return int(text(v))

        old = text(reply[9])
        return cls(
            state=State(text(reply[0])),
            generation=num(reply[1]),
            wait_ms=num(reply[2]),
            consecutive_failures=num(reply[3]),
            calls=num(reply[4]),
            failures=num(reply[5]),
            slow_calls=num(reply[6]),
            half_open_successes=num(reply[7]),
            trips=num(reply[8]),
            transitioned_from=State(old) if old else None,
            verdict=Verdict(text(reply[10])),
        )


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

    @classmethod
    def from_view(cls, name: str, view: View) -> Snapshot:
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
