"""The breaker's client-side logic, with no I/O: shared by the sync and asyncio shells.

The shells ask the core what to do (admit locally, ask Redis, refuse), perform the
one script call it names, and hand the reply back. The core keeps the cached view:

* a view fetched from Redis (or pushed by a pub/sub event) is trusted for
  ``sync_interval`` seconds at most; within it, closed-state calls need no Redis
  round trip and open-state calls are refused locally;
* successes in the closed state are counted locally and flushed with the next
  script call: the next failure, the next slow call, the periodic sync when the
  view's lease ends, or when ``max_pending`` have piled up;
* a deadline arrives as "milliseconds remaining" and becomes a local monotonic
  deadline, so no two hosts' clocks are compared.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from redisbreaker.errors import CircuitOpenError, CorruptStateError, StorageError
from redisbreaker.keys import KeySpace, escape_tag
from redisbreaker.model import BreakerModel
from redisbreaker.options import BreakerOptions, OutagePolicy
from redisbreaker.outage import BreakerUnavailableError, rate_limited
from redisbreaker.state import Snapshot, State, Transition, Verdict, View

monotonic = time.monotonic  # module-level so tests can replace the time source

# While Redis is unreachable, try it again at most this often per breaker.
OUTAGE_RETRY = 1.0

_origin_cache: tuple[int, str] | None = None


def origin() -> str:
    """An id for this process: host, pid and a random part (fresh after fork)."""
    global _origin_cache
    pid = os.getpid()
    if _origin_cache is None or _origin_cache[0] != pid:
        _origin_cache = (pid, f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:8]}")
    return _origin_cache[1]


@dataclass(frozen=True, slots=True)
class Ticket:
    """Permission for one call: which generation admitted it, and how to report it."""

    generation: int
    token: str = ""  # a half-open permit's lease id, else ""
    record: bool = True  # False: disabled, or Redis down under fail_open
    local: bool = False  # admitted by the in-process stand-in (outage policy "local")


_UNRECORDED = Ticket(generation=-1, record=False)


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One script call for a shell to make: which script, with what ARGV."""

    script: str
    args: list[Any]
    ticket_token: str = ""
    outcome: str = ""  # for a record call: the outcome code, kept for the outage fallback


class BreakerCore:
    """Cached view, pending tallies and decisions of one breaker in one process."""

    def __init__(self, name: str, options: BreakerOptions, keys: KeySpace) -> None:
        self.name = name
        self.options = options
        self.keys = keys
        self.key_list = [keys.key("s"), keys.key("p"), keys.key("b")]
        self.channel = keys.channel()
        self.static_args = options.static_argv
        self._lock = threading.Lock()
        self._tokens = itertools.count(1)
        self._prefix_cache: tuple[str, bytes] | None = None
        self.clock_override: Callable[[], int] | None = None  # tests only
        # The cached view.
        self.view: View | None = None
        self.generation = -1
        self.allow_ticket: Ticket | None = None  # set while the view lets calls through
        self.reject_until = 0.0  # monotonic; the cached view refuses calls until then
        self.reject_state = State.OPEN
        self.open_deadline = 0.0  # monotonic deadline of the open period, for retry_after
        self.view_expires = 0.0
        self.pending = 0
        self.pending_gen = -1
        # Outage handling.
        self.outage_until = 0.0
        self.local_model: BreakerModel | None = None

    # -- hot path ------------------------------------------------------------------

    def fast_admit(self, now: float) -> Ticket | None:
        """A ticket if the cached view decides the call; ``None`` if Redis must be asked.

        Raises :class:`CircuitOpenError` when the cached view says open.
        """
        if now < self.view_expires:
            ticket = self.allow_ticket
            if ticket is not None:
                return ticket
            if now < self.reject_until:
                raise self._open_error(now)
        if now < self.outage_until:
            return self.outage_admit(now)
        return None

    def finish(
        self, ticket: Ticket, exc: BaseException | None, duration: float
    ) -> ScriptCall | None:
        """What a finished call needs: nothing (counted locally) or one record call."""
        if exc is None:
            return self.fast_success(ticket, duration)
        return self.outcome(ticket, exc, duration)

    def fast_success(self, ticket: Ticket, duration: float) -> ScriptCall | None:
        """Count a success locally if possible; else the record call to make."""
        slow = self.options.slow_call_duration
        if ticket.token or ticket.local or (slow is not None and duration > slow):
            return self.outcome(ticket, None, duration)
        if not ticket.record:
            return None
        with self._lock:
            if ticket.generation != self.pending_gen:
                return None  # its generation is gone; Redis would drop it too
            self.pending += 1
            if self.pending < self.options.max_pending:
                return None
        return self.sync_call()

    # -- building script calls -------------------------------------------------------

    def _event_prefix(self) -> bytes:
        me = origin()
        if self._prefix_cache is None or self._prefix_cache[0] != me:
            head = b"\x96" + msgpack.packb(self.name) + msgpack.packb(me)
            self._prefix_cache = (me, head)
        return self._prefix_cache[1]

    def config_args(self) -> list[Any]:
        """ARGV[1..18] of every breaker script (see ``lua/lib/breaker.lua``)."""
        clock = str(self.clock_override()) if self.clock_override else ""
        return [clock, repr(random.random()), self.channel, self._event_prefix(), *self.static_args]

    def _take_pending(self) -> tuple[int, int]:
        with self._lock:
            taken = (self.pending, self.pending_gen)
            self.pending = 0
            return taken

    def _new_token(self) -> str:
        return f"{origin()}:{next(self._tokens)}"

    def sync_call(self) -> ScriptCall:
        """The admit script call (also the periodic sync that flushes successes)."""
        pending, pgen = self._take_pending()
        token = self._new_token()
        return ScriptCall("breaker_admit", [*self.config_args(), token, pending, pgen], token)

    def outcome(
        self, ticket: Ticket, exc: BaseException | None, duration: float
    ) -> ScriptCall | None:
        """The record call for a finished call, or ``None`` if nothing must be sent."""
        code = self.options.outcome(exc, duration)
        if ticket.local:
            self._local_record(ticket, code)
            return None
        if not ticket.record or (code == "x" and not ticket.token):
            return None
        pending, pgen = self._take_pending()
        args = [*self.config_args(), ticket.token, pending, pgen, ticket.generation, code]
        return ScriptCall("breaker_record", args, outcome=code)

    def operate_call(self, command: str, open_for: float = 0.0) -> ScriptCall:
        return ScriptCall(
            "breaker_operate", [*self.config_args(), command, max(1, round(open_for * 1000))]
        )

    def snapshot_call(self) -> ScriptCall:
        return ScriptCall("breaker_snapshot", self.config_args())

    # -- replies ---------------------------------------------------------------------

    def apply(self, reply: Sequence[Any], now: float) -> tuple[View, Transition | None]:
        """Take a script's reply into the cached view; return it and any transition it made."""
        view = View.parse(reply)
        self.outage_until = 0.0
        self.local_model = None  # Redis is back: rejoin the shared state
        self._cache(view, now)
        transition = None
        if view.transitioned_from is not None:
            transition = Transition(
                name=self.name, old=view.transitioned_from, new=view.state,
                generation=view.generation,
                retry_after=view.wait_ms / 1000.0 if view.state is State.OPEN else 0.0,
                origin=origin(),
            )  # fmt: skip
        return view, transition

    def admit_result(self, view: View, call: ScriptCall, now: float) -> Ticket:
        """The ticket for an admit reply, or raise when it refused the call."""
        if view.verdict is Verdict.TRIAL:
            return Ticket(view.generation, token=call.ticket_token)
        if view.verdict is Verdict.REJECT:
            raise self._open_error(now, view.state, view.wait_ms / 1000.0)
        if view.state is State.DISABLED:
            return Ticket(view.generation, record=False)
        assert self.allow_ticket is not None
        return self.allow_ticket

    def _cache(self, view: View, now: float) -> None:
        with self._lock:
            if view.generation != self.pending_gen:
                self.pending = 0
                self.pending_gen = view.generation
            self.view = view
            self.generation = view.generation
            self.view_expires = now + self.options.sync_interval
            wait = view.wait_ms / 1000.0
            state = view.state
            if state is State.CLOSED:
                self.allow_ticket = Ticket(view.generation)
            elif state is State.DISABLED:
                self.allow_ticket = Ticket(view.generation, record=False)
            else:
                self.allow_ticket = None
                self.reject_state = state
                if state is State.OPEN:
                    self.open_deadline = now + wait
                    self.reject_until = now + wait
                elif state is State.FORCED_OPEN:
                    self.reject_until = self.view_expires
                elif view.verdict is Verdict.REJECT:
                    # Half-open and the permits are taken: ask again when a lease could
                    # have ended, or at the next sync, whichever comes first.
                    self.reject_until = now + min(wait, self.options.sync_interval)
                else:
                    self.reject_until = 0.0  # half-open: each call asks for a permit

    def on_event(self, event: Transition, now: float) -> None:
        """A transition seen on pub/sub (possibly our own): update the cached view."""
        if event.generation <= self.generation:
            return
        kind = Verdict.REJECT if event.new is State.HALF_OPEN else Verdict.NONE
        view = View(
            state=event.new, generation=event.generation,
            wait_ms=round(event.retry_after * 1000), consecutive_failures=0, calls=0,
            failures=0, slow_calls=0, half_open_successes=0, trips=0,
            transitioned_from=None, verdict=kind,
        )  # fmt: skip
        if event.new is State.HALF_OPEN:
            # Another process holds the trial; refuse locally until the next sync.
            view = _with_wait(view, round(self.options.sync_interval * 1000))
        self._cache(view, now)

    def invalidate(self) -> None:
        """Forget the cached view (pub/sub reconnected: events may have been missed)."""
        self.view_expires = 0.0

    def _open_error(
        self, now: float, state: State | None = None, retry_after: float | None = None
    ) -> CircuitOpenError:
        state = state or self.reject_state
        if retry_after is None:
            deadline = self.open_deadline if state is State.OPEN else self.reject_until
            retry_after = max(0.0, deadline - now)
        if state is State.FORCED_OPEN:
            retry_after = self.options.reset_timeout  # a hint: forced open has no deadline
        return CircuitOpenError(self.name, round(retry_after, 3), state.value)

    # -- Redis unreachable ------------------------------------------------------------

    def record_failed(self, call: ScriptCall, exc: Exception, now: float) -> None:
        """A record call failed: under the ``local`` policy the stand-in still counts it."""
        self.storage_failed(exc, now)
        if self.options.on_outage is OutagePolicy.LOCAL and call.outcome:
            model = self._local()
            model.record(self._local_args(), _local_ms(), "", 0, -1, model.gen, call.outcome)

    def storage_failed(self, exc: Exception, now: float) -> None:
        """Note that a script call failed; the outage policy applies for a while."""
        self.outage_until = now + OUTAGE_RETRY
        self.view_expires = 0.0
        if isinstance(exc, CorruptStateError):
            rate_limited.error(self.name, "breaker %r: %s", self.name, exc)
        else:
            rate_limited.warning(
                self.name, "breaker %r: Redis unreachable (%s); policy %s",
                self.name, type(exc).__name__, self.options.on_outage.value,
            )  # fmt: skip

    def outage_admit(self, now: float) -> Ticket:
        policy = self.options.on_outage
        if policy is OutagePolicy.FAIL_OPEN:
            return _UNRECORDED
        if policy is OutagePolicy.FAIL_CLOSED:
            raise BreakerUnavailableError(self.name, round(max(0.0, self.outage_until - now), 3))
        token = self._new_token()
        view = self._local().admit(self._local_args(), _local_ms(), token, 0, -1)
        if view.verdict is Verdict.REJECT:
            raise self._open_error(now, view.state, view.wait_ms / 1000.0)
        if view.state is State.DISABLED:
            return _UNRECORDED
        return Ticket(view.generation, token if view.verdict is Verdict.TRIAL else "", local=True)

    def _local(self) -> BreakerModel:
        if self.local_model is None:
            self.local_model = BreakerModel()
        return self.local_model

    def _local_args(self) -> list[Any]:
        return self.options.argv(clock="", rand=random.random(), channel="", event_prefix=b"")

    def _local_record(self, ticket: Ticket, code: str) -> None:
        model = self.local_model
        if model is not None:
            model.record(self._local_args(), _local_ms(), ticket.token, 0, -1,
                         ticket.generation, code)  # fmt: skip

    # -- errors ------------------------------------------------------------------------

    def wrap_response_error(self, exc: Exception) -> StorageError:
        text = str(exc)
        if "WRONGTYPE" in text or "CORRUPT" in text:
            return CorruptStateError(
                f"breaker {self.name!r}: a key under {self.key_list[0]!r} holds data this "
                f"library did not write ({text.splitlines()[0][:200]})"
            )
        return StorageError(f"breaker {self.name!r}: Redis error: {text[:200]}")

    def snapshot(self, view: View) -> Snapshot:
        return Snapshot.from_view(self.name, view)


def _with_wait(view: View, wait_ms: int) -> View:
    from dataclasses import replace

    return replace(view, wait_ms=wait_ms)


def _local_ms() -> int:
    return int(monotonic() * 1000)


def decode_event(payload: bytes) -> tuple[str, Transition] | None:
    """Parse a breaker event published by ``transition()`` in ``lua/lib/breaker.lua``.

    Returns the breaker's hash tag (to find its local objects) and the transition.
    """
    try:
        name, who, old, new, gen, remain = msgpack.unpackb(payload, raw=False)
        return escape_tag(name), Transition(
            name=name if isinstance(name, str) else name.decode("utf-8", "replace"),
            old=State(old), new=State(new), generation=int(gen),
            retry_after=int(remain) / 1000.0, origin=str(who),
        )  # fmt: skip
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
