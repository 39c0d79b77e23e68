"""The breaker's client-side logic, with no I/O: shared by the sync and asyncio shells.

The shells ask the core what to do (admit locally, ask Redis, refuse), perform the
one script call it names, and hand the reply back. The core keeps the cached view:

* a view fetched from Redis (or pushed by a pub/sub event) is trusted for
  ``sync_interval`` seconds at most; within it, closed-state calls need no Redis
  round trip and open-state calls are refused locally;
* successes in the closed state are counted locally and flushed with the next
  script call: the next failure, the next slow call, the periodic sync when the
  view's lease ends, or when ``max_pending`` have piled up;
* a process reports its outcomes to Redis in the order they completed: they queue in
  an outbox, and one thread at a time (the *sender*) sends the whole queue in one
  script call, so two threads' reports never overtake each other on the way;
* a deadline arrives as "milliseconds remaining" and becomes a local monotonic
  deadline, so no two hosts' clocks are compared;
* while Redis is unreachable, one caller per breaker probes it at most once per
  ``OUTAGE_RETRY`` seconds; every other call applies the outage policy at once.
"""

from __future__ import annotations

import getpass
import itertools
import logging
import os
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import msgpack

from redisbreaker import forking, scripts
from redisbreaker.errors import (
    BreakerUnavailableError,
    CircuitOpenError,
    ConfigurationError,
    CorruptStateError,
    StorageError,
)
from redisbreaker.keys import KeySpace
from redisbreaker.model import BreakerModel, Entry
from redisbreaker.options import BreakerOptions, OutagePolicy, open_seconds
from redisbreaker.outage import Trouble, classify, describe, rate_limited
from redisbreaker.state import Code, Snapshot, State, Transition, Verdict, View, text_of

# Our own generator: background threads (the syncer, waiters) must not draw from the
# global one, which a user (or Hypothesis) may seed and watch. Reseeded after fork.
_rng = random.Random()
os.register_at_fork(after_in_child=_rng.seed)

monotonic = time.monotonic  # module-level so tests can replace the time source

logger = logging.getLogger("redisbreaker")

# While Redis is unreachable, try it again at most this often per breaker and process.
OUTAGE_RETRY = 1.0
# A thread that holds the sender role sends at most this many batches in a row, then
# leaves what queued meanwhile to the next thread that reports (its own work waits).
SENDER_ROUNDS = 64
# A Redis error that is not an outage (a bug or a misconfiguration) is logged at ERROR
# at most this often per breaker and process, with a count of the ones in between.
ERROR_LOG_INTERVAL = 5.0

_DID = {State.OPEN: "opened", State.FORCED_OPEN: "forced open", State.DISABLED: "disabled"}
# How the reason of an operator's command begins (see lua/breaker_operate.lua).
OPERATOR_COMMANDS = ("open for ", "force_open by ", "disable by ", "reset by ")

_origin_cache: tuple[int, str] | None = None
_process_label: str | None = None
# A failure's description, as recorded with a trip, is cut to this many bytes.
NOTE_BYTES = 200
_CREDENTIALS = re.compile(r"(\w+://)[^/@\s]*@")


def set_process_label(label: str | None) -> None:
    """Name this process in the reasons it records (the Celery integration uses the
    worker's node name); the default is the host name."""
    global _process_label, _origin_cache
    _process_label = label
    _origin_cache = None


def origin() -> str:
    """An id for this process: its label (host name or worker), pid and a random part
    (fresh after fork)."""
    global _origin_cache
    # The fork epoch, not os.getpid(): a system call, and every script call asks.
    if _origin_cache is None or _origin_cache[0] != forking.epoch:
        label = _process_label or socket.gethostname()
        pid = os.getpid()
        _origin_cache = (forking.epoch, f"{label}:{pid}:{uuid.uuid4().hex[:8]}")
    return _origin_cache[1]


def failure_note(exc: BaseException) -> str:
    """``Class: message`` of a failure, at most ``NOTE_BYTES`` bytes, credentials in
    URLs masked: what a trip records as its cause."""
    try:
        text = str(exc)
    except Exception:  # a broken __str__ must not break the outcome report
        text = ""
    if text:
        text = text.splitlines()[0] if "\n" in text else text
        if "@" in text:  # (the common case, no URL with credentials, skips the regex)
            text = _CREDENTIALS.sub(r"\1***@", text)
    note = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if len(note) <= NOTE_BYTES and note.isascii():  # (nothing to cut or to replace)
        return note
    return note.encode("utf-8", "replace")[:NOTE_BYTES].decode("utf-8", "ignore")


@dataclass(frozen=True, slots=True)
class Ticket:
    """Permission for one call: which generation admitted it, and how to report it."""

    generation: int
    token: str = ""  # a half-open permit's lease id, else ""
    counted: bool = True  # False: disabled, or Redis down under fail_open
    local: bool = False  # admitted by the in-process stand-in (outage policy "local")


_UNRECORDED = Ticket(generation=-1, counted=False)


class ScriptCall(NamedTuple):
    """One script call for a shell to make: which script, with what ARGV. (A named
    tuple, not a frozen dataclass: every recorded failure makes one, and a tuple is
    made in a third of the time.)"""

    script: str
    args: list[Any]
    ticket_token: str = ""
    batch: tuple[Entry, ...] = ()  # the outcomes it reports, in completion order
    sender: bool = False  # holds the sender role: the shell must hand it back (sent())
    extra_keys: tuple[str, ...] = ()  # KEYS after the breaker's own (gate_claim's lease)


@dataclass(frozen=True, slots=True)
class GateVerdict:
    """What ``gate_claim`` told a paused worker: ``resume`` (consume), ``trial`` (this
    worker holds the trial lease for ``ms``) or ``wait`` (``ms`` until it could change;
    0: no deadline)."""

    action: str
    generation: int
    ms: int
    server_ms: int = 0  # the server's clock when it answered

    @classmethod
    def parse(cls, reply: Sequence[Any]) -> GateVerdict:
        return cls(text_of(reply[0]), int(reply[1]), int(reply[2]), int(reply[3]))


def _flat(batch: Sequence[Entry]) -> list[Any]:
    return [x for entry in batch for x in entry]


class BreakerCore:
    """Cached view, outbox and decisions of one breaker in one process."""

    def __init__(self, name: str, options: BreakerOptions, keys: KeySpace) -> None:
        self.name = name
        self.options = options
        self.keys = keys
        # A tuple: every script call sends it as it is (nothing may change it).
        self.key_list = (keys.key("s"), keys.key("p"), keys.key("b"), keys.key("r"))
        self.channel = keys.channel()
        self.now: Callable[[], float] = monotonic  # the local clock (tests drive it)
        self.clock_override: Callable[[], int] | None = None  # Redis's clock (tests only)
        # Synced by the process's background syncer (redisbreaker/syncer.py), unless
        # turned off, on Redis Cluster, or while a test drives the clock.
        self.background = options.background_sync
        self._lock = threading.Lock()
        self._tokens = itertools.count(1)
        self._prefix_cache: tuple[str, bytes] | None = None
        self.ttl_refresh_at = 0.0  # monotonic: when a call next refreshes the TTL
        # The cached view.
        self.view: View | None = None
        self.generation = -1
        self.allow_ticket: Ticket | None = None  # set while the view lets calls through
        self.reject_until = 0.0  # monotonic; the cached view refuses calls until then
        self.reject_state = State.OPEN
        self.open_deadline = 0.0  # monotonic deadline of the open period, for retry_after
        self.view_expires = 0.0
        # Outcomes not yet sent: plain successes of the current generation are a count
        # (the hot path only increments it); anything else queues in the outbox behind
        # the successes that completed before it.
        self.pending = 0
        self.pending_gen = -1
        self._outbox: list[Entry] = []
        self._sending = False
        self._flush_requested = False
        # Outage handling.
        self.outage_since: float | None = None  # monotonic start of the current outage
        self.outage_until = 0.0  # no probe of Redis before this
        self._probing = False
        self._outage_calls = 0
        self.local_model: BreakerModel | None = None
        # Errors that are not outages, for snapshot() and the logs.
        self.errors = 0
        self.last_error: str | None = None
        # State loss (redisbreaker/durability.py): what Redis last said, and when.
        self.redis_view: View | None = None
        self.redis_view_at = 0.0
        self.state_lost = 0  # times this process found the breaker's state gone
        self.data_lost_at_ms = 0  # set by the shells from the prefix's marker
        self._warned_settings: set[str] = set()
        # Counted here and sent with the next script call: calls refused while open and
        # calls whose outcome counts nothing; and the last failure, recorded with a trip.
        self.refused = 0
        self.ignored = 0
        self.last_failure = ""

    def reinit_after_fork(self) -> None:
        """A forked child starts with fresh locks and no sender or probe in flight."""
        self._lock = threading.Lock()
        self._sending = self._probing = False
        self.view_expires = 0.0

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
        if self.outage_since is not None:
            return self._outage_gate(now)
        return None

    def _outage_gate(self, now: float) -> Ticket | None:
        """During an outage: ``None`` for the one caller that probes Redis, else the policy."""
        if now >= self.outage_until:
            with self._lock:
                probe = not self._probing
                self._probing = True
            if probe:
                return None
        self._outage_calls += 1
        return self.outage_admit(now)

    def finish(
        self, ticket: Ticket, exc: BaseException | None, duration: float
    ) -> ScriptCall | None:
        """What a finished call needs: nothing (queued or counted locally) or a script
        call that the shell must send (it then holds the sender role)."""
        if exc is None:
            slow = self.options.slow_call_duration
            code = Code.SLOW_SUCCESS if slow is not None and duration > slow else Code.SUCCESS
        else:
            code = self.options.outcome(exc, duration)
            if code.failed:
                self.last_failure = failure_note(exc)
        return self.finish_code(ticket, code)

    def success(self, ticket: Ticket, duration: float) -> ScriptCall | None:
        """:meth:`finish` of a call that returned, with the common case (a fast success
        in the current generation) counted here in one step: the hot path."""
        slow = self.options.slow_call_duration
        if (
            (slow is not None and duration > slow) or ticket.token or ticket.local
            or not ticket.counted or self.outage_since is not None
        ):  # fmt: skip
            return self.finish(ticket, None, duration)
        with self._lock:
            if ticket.generation == self.pending_gen:
                self.pending += 1
                if self.pending < self.options.max_pending or self._sending:
                    return None
                return self._report_locked()
        return self.finish_code(ticket, Code.SUCCESS)  # its generation is gone

    def finish_code(self, ticket: Ticket, code: Code) -> ScriptCall | None:
        """:meth:`finish` with the outcome decided (``Code.IGNORED``: count nothing)."""
        if ticket.local or (ticket.counted and self.outage_since is not None):
            # Redis is known to be down: never stall on it; the stand-in (if any) counts.
            self._local_record(ticket, code)
            return None
        if not ticket.counted:
            return None
        if code is Code.IGNORED and not ticket.token:
            self.ignored += 1  # (a lost increment under a race only skews a total)
            return None
        with self._lock:
            if code is Code.SUCCESS and not ticket.token:
                if ticket.generation != self.pending_gen:
                    # Its generation is gone: it no longer counts in the state, only in
                    # the fleet's totals, which ride on the next script call.
                    self._queue_run(ticket.generation, Code.SUCCESS, 1)
                    return None
                self.pending += 1
                if self.pending < self.options.max_pending or self._sending:
                    return None
            else:
                self._queue_pending()
                self._outbox.append((ticket.generation, code, 1, ticket.token))
                if self._sending:
                    return None  # the thread sending now sends this next, in order
            return self._report_locked()

    # -- the outbox and the sender role ------------------------------------------------

    def _queue_run(self, generation: int, code: Code, count: int) -> None:
        """Queue ``count`` outcomes, merged into the last run when it is the same kind."""
        if self._outbox:
            gen, last, m, token = self._outbox[-1]
            if (gen, last, token) == (generation, code, ""):
                self._outbox[-1] = (gen, last, m + count, token)
                return
        self._outbox.append((generation, code, count, ""))

    def _queue_pending(self) -> None:
        if self.pending:
            self._outbox.append((self.pending_gen, Code.SUCCESS, self.pending, ""))
            self.pending = 0
        if self.ignored:
            self._outbox.append((self.generation, Code.IGNORED, self.ignored, ""))
            self.ignored = 0
        if self.refused:
            self._outbox.append((self.generation, Code.REFUSED, self.refused, ""))
            self.refused = 0

    def _take_locked(self) -> tuple[Entry, ...]:
        self._queue_pending()
        batch = tuple(self._outbox)
        self._outbox = []
        self._sending = bool(batch)
        self._flush_requested = False
        return batch

    def _report_locked(self) -> ScriptCall:
        return self._report_call(self._take_locked())

    def _report_call(self, batch: tuple[Entry, ...]) -> ScriptCall:
        """``breaker_report`` with ``batch``; the sender role goes with a non-empty one
        (:meth:`_take_locked` took it)."""
        args = self.config_args()
        args += _flat(batch)
        return ScriptCall("breaker_report", args, "", batch, bool(batch))

    def sent(self, *, keep: bool = True) -> ScriptCall | None:
        """The sender's call went through: the next batch to send, or ``None`` with the
        role handed back. Successes alone wait for their usual flush; with
        ``keep=False`` the role is handed back whatever is queued."""
        with self._lock:
            flush = self._flush_requested or self.pending >= self.options.max_pending
            if keep and (self._outbox or (self.pending and flush)):
                return self._report_locked()
            self._sending = False
            return None

    def send_failed(self, call: ScriptCall, exc: Exception) -> None:
        """The sender's call failed: its outcomes (and what queued behind them) go to the
        local stand-in under the ``local`` policy, and are dropped otherwise."""
        with self._lock:
            lost = [*call.batch, *self._outbox]
            self._outbox = []
            self.pending = 0
            self._sending = False
        self.storage_failed(exc, self.now())
        if self.options.on_outage is OutagePolicy.LOCAL:
            # The stand-in counts what met the outage. A run of successes resets its
            # consecutive count once; replaying every one would only fill its window.
            model = self._local()
            batch = [(model.gen, code, 1, "") for _gen, code, _count, _token in lost]
            model.report(self._local_args(), self._local_ms(), batch)

    def abandoned(self, call: ScriptCall) -> None:
        """A call was interrupted (cancelled, KeyboardInterrupt): release what it held."""
        with self._lock:
            if call.sender:
                self._sending = False
            self._probing = False

    # -- building script calls -------------------------------------------------------

    def _event_prefix(self, me: str) -> bytes:
        # The event carries the exact key tag, so the receiver routes it to this
        # breaker and no other (a decoded name can re-escape to another breaker's tag).
        if self._prefix_cache is None or self._prefix_cache[0] != me:
            head = b"\x97" + msgpack.packb(self.keys.tag) + msgpack.packb(self.name)
            self._prefix_cache = (me, head + msgpack.packb(me))
        return self._prefix_cache[1]

    def config_args(self, *, who: str | None = None, note: str | None = None) -> list[Any]:
        """ARGV[1..OP-1] of every breaker script (see ``lua/lib/breaker.lua``): by
        default this process is who calls, and the note is its last failure."""
        clock = str(self.clock_override()) if self.clock_override else ""
        me = origin()
        return self.options.argv(
            clock=clock, rand=_rng.random(), channel=self.channel,
            event_prefix=self._event_prefix(me), who=me if who is None else who,
            note=self.last_failure if note is None else note,
            refresh_ttl=self.ttl_due(),
        )  # fmt: skip

    def ttl_due(self) -> bool:
        """Whether this call refreshes the state's TTL: this process's first, the first
        after a failed call, then one at most every ttl/10 (by the local monotonic
        clock; a race sends two, which is harmless). Between them a script keeps the
        TTL, which saves it a write; so an idle breaker's state expires 0.9 x ttl to
        ttl after the fleet's last call."""
        now = time.monotonic()
        if now < self.ttl_refresh_at:
            return False
        self.ttl_refresh_at = now + self.options.ttl / 10
        return True

    def _new_token(self) -> str:
        return f"{origin()}:{next(self._tokens)}"

    def admit_call(self) -> ScriptCall:
        """The admit script call for a call the cached view cannot decide. It also
        carries the outbox when no other thread is sending."""
        token = self._new_token()
        with self._lock:
            batch = () if self._sending else self._take_locked()
        args = [*self.config_args(), token, *_flat(batch)]
        return ScriptCall("breaker_admit", args, token, batch, sender=bool(batch))

    def flush_call(self) -> ScriptCall:
        """``sync()``: report what is pending and read the state. Never takes a permit."""
        with self._lock:
            if self._sending:
                self._flush_requested = True  # the sender flushes it after its call
                batch: tuple[Entry, ...] = ()
            else:
                batch = self._take_locked()
        return self._report_call(batch)

    def background_call(self, now: float, lead: float) -> ScriptCall | None:
        """The sync the process's background syncer sends for this breaker now
        (redisbreaker/syncer.py), or ``None``. Due when the cached view ends within
        ``lead`` and something was counted since the last script call, so a breaker
        nobody calls costs nothing. Never during an outage (the calls' own probe finds
        out when Redis is back), before the first script call, while a thread is
        sending (its call refreshes the view), or half-open (each call asks Redis for a
        permit anyway, and a refusal it caches must stand). Like ``sync()``, it takes
        no permit."""
        view = self.view
        if view is None or self.outage_since is not None or now < self.view_expires - lead:
            return None
        if view.state is State.HALF_OPEN:
            return None
        if not (self.pending or self.refused or self.ignored or self._outbox):
            return None
        with self._lock:
            if self._sending:
                return None
            batch = self._take_locked()
        return self._report_call(batch)

    def operate_call(
        self, command: str, open_for: object = None, *, reason: object = None,
        actor: str | None = None,
    ) -> ScriptCall:  # fmt: skip
        """An operator's command; ``reason`` and ``actor`` (default ``user@host``) are
        recorded with the state (see :class:`~redisbreaker.state.Reason`)."""
        ms = round(open_seconds(open_for, "open(seconds)") * 1000) if command == "open" else 0
        note = "" if reason is None else operator_text("reason", reason)
        who = operator() if actor is None else operator_text("actor", actor)
        return ScriptCall("breaker_operate", [*self.config_args(who=who, note=note), command, ms])

    def snapshot_call(self) -> ScriptCall:
        return ScriptCall("breaker_snapshot", self.config_args())

    def gate_claim_call(self, worker_id: str, lease_ms: int, mode: str) -> ScriptCall:
        """May the paused worker ``worker_id`` consume again (see ``lua/gate_claim.lua``)?
        ``mode`` is ``"trial"`` (one worker resumes for the half-open trial) or
        ``"manual"`` (everyone resumes at the deadline)."""
        return ScriptCall(
            "gate_claim", [*self.config_args(), worker_id, lease_ms, mode],
            extra_keys=(self.keys.key("gate"),),
        )  # fmt: skip

    # -- replies ---------------------------------------------------------------------

    def apply(self, reply: Sequence[Any], now: float) -> tuple[View, Transition | None]:
        """Take a script's reply into the cached view; return it and any transition it made."""
        view = View.parse(reply)
        self._check_continuity(view, now)
        if self.outage_since is not None:
            self._recovered(now)
        self.local_model = None  # Redis is reachable: rejoin the shared state
        if view.other_settings:
            self._settings_differ(view.other_settings)
        self._cache(view, now)
        transition = None
        if view.transitioned_from is not None:
            self._log_transition(view)
            transition = Transition(
                name=self.name, old=view.transitioned_from, new=view.state,
                generation=view.generation,
                retry_after=view.wait_ms / 1000.0 if view.state is State.OPEN else 0.0,
                origin=origin(),
            )  # fmt: skip
        return view, transition

    def _check_continuity(self, view: View, now: float) -> None:
        """A generation only grows; Redis answering with a lower one than it gave this
        process, while the breaker was open or paused, means the state was lost (evicted,
        or Redis lost its data): the breaker starts again closed. Said at ERROR once per
        loss. (A breaker idle past its ``ttl`` expires by design; that is not a loss.)"""
        before, at = self.redis_view, self.redis_view_at
        self.redis_view, self.redis_view_at = view, now
        if before is None or view.generation >= before.generation:
            return
        if before.state is State.CLOSED or now - at > self.options.ttl:
            return
        self.state_lost += 1
        rate_limited.error(
            f"{self.name}:lost", "breaker %r: its state in Redis is gone (it was %s at "
            "generation %d; Redis now says %s at generation %d): evicted, or Redis lost its "
            "data; see docs/redis.md for the settings that prevent it",
            self.name, before.state.value, before.generation, view.state.value,
            view.generation, interval=0.0,
        )  # fmt: skip

    def _log_transition(self, view: View) -> None:
        """One line per transition, in the process whose call made it (so once per
        fleet): a trip or an operator's command at WARNING, a recovery at INFO."""
        why = view.transition_reason
        if view.state is State.HALF_OPEN or not why:
            return
        if view.state is State.CLOSED:
            logger.info("breaker %r closed: %s", self.name, why)
            return
        by_operator = why.startswith(OPERATOR_COMMANDS)
        cause = (
            f"; last failure: {self.last_failure}" if self.last_failure and not by_operator else ""
        )
        retry = f"; retry in {view.wait_ms / 1000.0:.1f}s" if view.state is State.OPEN else ""
        logger.warning(
            "breaker %r %s: %s%s%s", self.name, _DID[view.state], why, cause, retry,
        )  # fmt: skip

    def admit_result(self, view: View, call: ScriptCall, now: float) -> Ticket:
        """The ticket for an admit reply, or raise when it refused the call."""
        if view.verdict is Verdict.TRIAL:
            return Ticket(view.generation, token=call.ticket_token)
        if view.verdict is Verdict.REJECT:
            raise self._open_error(now, view.state, view.wait_ms / 1000.0)
        if view.state is State.DISABLED:
            return Ticket(view.generation, counted=False)
        assert self.allow_ticket is not None
        return self.allow_ticket

    def _cache(self, view: View, now: float) -> None:
        with self._lock:
            if view.generation != self.pending_gen:
                self._queue_pending()  # (an older generation's: counted in the totals only)
                self.pending_gen = view.generation
            self.view = view
            self.generation = view.generation
            self.view_expires = now + self.options.sync_interval
            wait = view.wait_ms / 1000.0
            state = view.state
            ticket = self.allow_ticket  # kept while it says the same (each failure's reply)
            if state is State.CLOSED:
                if ticket is None or ticket.generation != view.generation or not ticket.counted:
                    self.allow_ticket = Ticket(view.generation)
            elif state is State.DISABLED:
                if ticket is None or ticket.generation != view.generation or ticket.counted:
                    self.allow_ticket = Ticket(view.generation, counted=False)
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
        # The script that moves a breaker to half-open leases a permit to its caller in
        # the same step. With one permit, that caller holds the trial: refuse locally
        # until the next sync. With more, some are free: each call asks Redis for one
        # (a refusal is then cached until a lease could end).
        held = event.new is State.HALF_OPEN and self.options.half_open_permits == 1
        view = View(
            state=event.new, generation=event.generation,
            wait_ms=round(event.retry_after * 1000), consecutive_failures=0, calls=0,
            failures=0, slow_calls=0, half_open_successes=0, trips=0,
            transitioned_from=None, verdict=Verdict.REJECT if held else Verdict.NONE,
        )  # fmt: skip
        if held:
            view = replace(view, wait_ms=round(self.options.sync_interval * 1000))
        self._cache(view, now)

    def invalidate(self) -> None:
        """Forget the cached view (pub/sub reconnected: events may have been missed)."""
        self.view_expires = 0.0

    def _open_error(
        self, now: float, state: State | None = None, retry_after: float | None = None
    ) -> CircuitOpenError:
        self.refused += 1  # (a lost increment under a race only skews a total)
        state = state or self.reject_state
        if retry_after is None:
            deadline = self.open_deadline if state is State.OPEN else self.reject_until
            retry_after = max(0.0, deadline - now)
        if state is State.FORCED_OPEN:
            retry_after = self.options.reset_timeout  # a hint: forced open has no deadline
        return CircuitOpenError(self.name, round(retry_after, 3), state.value)

    def _settings_differ(self, stored: str) -> None:
        if stored in self._warned_settings:
            return
        self._warned_settings.add(stored)
        logger.warning(
            "breaker %r: another process uses different settings for this breaker (%s); "
            "each script call applies its caller's settings, so the processes overrule "
            "each other. Use the same settings everywhere.",
            self.name, self.options.settings_difference(stored),
        )  # fmt: skip

    # -- Redis unreachable ------------------------------------------------------------

    def call_failed(self, call: ScriptCall, exc: Exception) -> None:
        """A script call failed: note it, and hand back the sender role if it held it."""
        if call.sender:
            self.send_failed(call, exc)
        else:
            self.storage_failed(exc, self.now())

    def storage_failed(self, exc: Exception, now: float) -> None:
        """Note that a script call failed; ``now`` is read after the failure, so the next
        probe waits ``OUTAGE_RETRY`` from when the failure was known, not from before
        a socket timeout."""
        self.view_expires = 0.0
        self.ttl_refresh_at = 0.0  # the failed call may have been the one to refresh it
        with self._lock:
            self._probing = False
        trouble = classify(exc)
        if trouble is not Trouble.OUTAGE:
            self.errors += 1
            corrupt = isinstance(exc, CorruptStateError)
            self.last_error = f"CorruptStateError: {exc}" if corrupt else describe(exc)
            hint = f"; {trouble.hint}" if trouble.hint else ""
            rate_limited.error(
                f"{self.name}:error", "breaker %r: %s (%s); this call follows policy %s%s",
                self.name, trouble.value, self.last_error, self.options.on_outage.value, hint,
                interval=ERROR_LOG_INTERVAL,
            )  # fmt: skip
            return
        self.outage_until = now + OUTAGE_RETRY
        if self.outage_since is None:
            self.outage_since = now
            self._outage_calls = 0
            rate_limited.warning(
                self.name, "breaker %r: Redis unreachable (%s); policy %s until it is back",
                self.name, describe(exc), self.options.on_outage.value,
            )  # fmt: skip

    def _recovered(self, now: float) -> None:
        since = self.outage_since
        self.outage_since = None
        self._probing = False
        if since is not None:
            logger.info(
                "breaker %r: Redis reachable again after %.1fs; %d calls followed policy %s",
                self.name, now - since, self._outage_calls, self.options.on_outage.value,
            )  # fmt: skip

    def outage_admit(self, now: float) -> Ticket:
        policy = self.options.on_outage
        if policy is OutagePolicy.FAIL_OPEN:
            return _UNRECORDED
        if policy is OutagePolicy.FAIL_CLOSED:
            raise BreakerUnavailableError(self.name, round(max(0.0, self.outage_until - now), 3))
        token = self._new_token()
        view = self._local().admit(self._local_args(), self._local_ms(), token)
        if view.verdict is Verdict.REJECT:
            raise self._open_error(now, view.state, view.wait_ms / 1000.0)
        if view.state is State.DISABLED:
            return _UNRECORDED
        return Ticket(view.generation, token if view.verdict is Verdict.TRIAL else "", local=True)

    def _local_ms(self) -> int:
        return int(self.now() * 1000)

    def _local(self) -> BreakerModel:
        if self.local_model is None:
            self.local_model = BreakerModel()
        return self.local_model

    def _local_args(self) -> list[Any]:
        return self.options.argv(clock="", rand=_rng.random(), channel="", event_prefix=b"")

    def _local_record(self, ticket: Ticket, code: str) -> None:
        if ticket.local:
            model = self.local_model
            if model is not None:
                batch = [(ticket.generation, code, 1, ticket.token)]
                model.report(self._local_args(), self._local_ms(), batch)
        elif self.options.on_outage is OutagePolicy.LOCAL:
            # Admitted by the shared state just before the outage: the stand-in counts it.
            model = self._local()
            model.report(self._local_args(), self._local_ms(), [(model.gen, code, 1, "")])

    # -- errors ------------------------------------------------------------------------

    def wrap_response_error(self, exc: Exception, script: str) -> StorageError:
        """The library's error for an error reply to ``script`` (a Lua error names the
        source file and line it came from)."""
        text = str(exc)
        if "WRONGTYPE" in text or "CORRUPT" in text:
            return CorruptStateError(
                f"breaker {self.name!r}: a key under {self.key_list[0]!r} holds data this "
                f"library did not write ({text.splitlines()[0][:200]})"
            )
        trouble = classify(exc)
        hint = f"; {trouble.hint}" if trouble.hint else ""
        detail = scripts.explain(script, describe(exc))
        error = StorageError(f"breaker {self.name!r}: {trouble.value}: {detail}{hint}")
        error.detail = detail
        return error

    def snapshot(self, view: View) -> Snapshot:
        return Snapshot.from_view(
            self.name, view,
            fingerprint=self.options.fingerprint(view.other_settings or None),
            errors=self.errors, last_error=self.last_error, state_lost=self.state_lost,
            data_lost_at_ms=self.data_lost_at_ms,
        )  # fmt: skip


def operator() -> str:
    """``user@host`` of this process, as operator actions record it."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name in some containers
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def operator_text(what: str, value: object) -> str:
    """An operator's reason or name: text, at most ``NOTE_BYTES`` bytes."""
    if not isinstance(value, str):
        raise ConfigurationError(f"{what} must be a str, got {value!r}")
    return value.encode("utf-8", "replace")[:NOTE_BYTES].decode("utf-8", "ignore")


def decode_event(payload: bytes) -> tuple[str, Transition] | None:
    """Parse a breaker event published by ``transition()`` in ``lua/lib/breaker.lua``.

    Returns the breaker's key tag (to find its local objects) and the transition.
    """
    try:
        tag, name, who, old, new, gen, remain = msgpack.unpackb(payload, raw=False)
        return str(tag), Transition(
            name=str(name), old=State(old), new=State(new), generation=int(gen),
            retry_after=int(remain) / 1000.0, origin=str(who),
        )  # fmt: skip
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
