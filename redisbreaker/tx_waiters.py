"""Waking transaction waiters, on the process's shared pub/sub hub (``events.py``).

The script that decides a transaction publishes the decision (msgpack) on the
prefix's channel (on Redis Cluster: its hash slot's, see keys.py). Waiters register
under their transaction id with the hub of their client: the same connection per
process and client (per Cluster master) that breakers use, so a process with a
thousand waiting participants holds one extra Redis connection, not a thousand, and
nobody polls. A waiter holds no pooled connection while it sleeps; its
occasional status read borrows one for a single short command. The message carries
the whole decision, so a waiter it wakes returns without another round trip.

A message can be missed while the subscription is (re)made. The waiter closes that
race: it registers first, then reads the status once; when the server confirms the
subscription of its channel (or the connection drops) the hub tells its waiters to read
the status again (one whose first read is still to come just drops the request: that
read covers it); and a waiter always reads it once more at its own timeout. A waiter always
leaves the hub (also on error or cancellation), so an id nobody waits on costs
nothing there.

Waiting threads are woken through the process's :class:`Relay`, a few at a time,
each woken thread waking the next: setting a thousand events at once makes a thousand
threads fight for the GIL, and the last of them waited 1.6-1.9x as long as through a
relay (the votes suite, benchmarks/README.md).
"""

from __future__ import annotations

import _thread
import collections
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from redisbreaker.tx_core import Decision, parse_message

# How long a waiter waits for the subscription to be confirmed before it falls back
# to reading the status on a short period (degraded, but never stuck).
READY_TIMEOUT = 2.0
# How many woken threads a relay lets contend for the GIL at once: one runs while the
# next is being scheduled. (Measured: 1 to 4 are alike; all at once is the same at 25
# threads per process, 1.6-1.9x slower at 250.)
RELAY_DEPTH = 2

__all__ = ["READY_TIMEOUT", "RELAY_DEPTH", "Latch", "Relay", "Waiter", "decode", "thread_relay"]

# A waiter's place in its relay, changed under the relay's lock and only forwards.
_NEW, _QUEUED, _TURN, _DONE = range(4)


def decode(payload: bytes) -> tuple[str, Decision] | None:
    """A published decision as (transaction id, decision); ``None`` if malformed."""
    decision = parse_message(payload)
    return None if decision is None else (decision.tx_id, decision)


class Latch:
    """``threading.Event``'s set/clear/wait/is_set for the one thread that waits on it.

    One raw lock, held while the latch is clear: waiting is acquiring it (and letting
    go at once, so the latch stays set), setting is releasing it. ``threading.Event``
    is a ``Condition`` written in Python: making one, setting it and waking from it
    cost a few µs of the GIL each, and a thousand woken waiters pay them in a row.
    Only the waiting thread calls :meth:`wait` and :meth:`clear`; any thread may set.
    """

    __slots__ = ("_flag", "_gate", "_mutex")

    def __init__(self) -> None:
        self._gate = _thread.allocate_lock()
        self._gate.acquire()
        self._flag = False
        # Keeps the flag and the gate's state together when a set races another set
        # or a clear. Held for a few bytecodes, never while anyone blocks; one per
        # latch, so a fork while another thread holds it strands nobody in the child.
        self._mutex = _thread.allocate_lock()

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        with self._mutex:
            if not self._flag:
                self._flag = True
                self._gate.release()

    def clear(self) -> None:
        with self._mutex:
            if self._flag:
                self._flag = False
                self._gate.acquire(False)  # free: set released it, and the waiter is us

    def wait(self, timeout: float | None = None) -> bool:
        """True once set (at once if it is), False if ``timeout`` seconds pass first."""
        if timeout is None:
            got = self._gate.acquire()
        elif timeout > 0:
            got = self._gate.acquire(True, min(timeout, threading.TIMEOUT_MAX))
        else:
            got = self._gate.acquire(False)
        if got:
            self._gate.release()  # still set: only clear() closes it again
        return got


@dataclass(eq=False)
class Waiter:
    """One waiter's mailbox: the published decision, or a request to read again.

    ``event`` is a :class:`Latch` for threads or an ``asyncio.Event`` for a loop;
    ``ready`` is the hub's flag for the transaction's channel, set while its
    subscription is confirmed. ``relay`` paces the waking of threads (``None`` in
    asyncio, where setting an event only schedules a task on the loop's own thread);
    ``asleep`` is True while the thread waits on ``event`` (set by the thread shell).
    """

    tx_id: str
    event: Any
    ready: Any
    relay: Relay | None = None
    decision: Decision | None = None
    recheck: bool = False
    asleep: bool = False
    place: int = field(default=_NEW, repr=False)

    def on_message(self, decision: Decision) -> None:
        self.decision = decision
        if self.relay is None:
            self.event.set()
        else:
            self.relay.wake(self)

    def on_reset(self) -> None:
        self.recheck = True
        self.event.set()

    def settle(self) -> None:
        """Drop the re-read requests heard so far, before the first read.

        A reset means "what was published before now may be lost"; a read sent after
        it sees all of that. Without this, the confirmation of a new subscription made
        every waiter that registered before it read the status twice.
        """
        self.event.clear()
        self.recheck = False
        if self.decision is not None:  # delivered meanwhile: keep that wake
            self.event.set()

    def take(self) -> Decision | None:
        """The decision if one arrived (which ends the wait), else clears a recheck
        request and the event."""
        if self.decision is not None:
            if self.relay is not None:
                self.relay.done(self)  # first thing after waking: the next thread wakes meanwhile
            return self.decision
        self.event.clear()
        self.recheck = False
        return None

    def leave(self) -> None:
        """The waiter stops waiting (decided, timed out, failed or cancelled): a turn
        the relay gave it, or would give it, goes to the next waiter."""
        if self.relay is not None and self.place != _DONE:  # (_DONE is final: no lock)
            self.relay.done(self)


class Relay:
    """Wakes waiting threads ``depth`` at a time; each woken thread wakes the next.

    The hub's thread hands it each waiter a message is for (:meth:`wake`); a waiter
    that takes its decision or leaves (:meth:`done`) gives its turn to the next queued
    one. Only a thread asleep on its event gets a turn: one that is busy (a status
    read in flight, still subscribing) has its event set at once and takes no turn, so
    a slow Redis call never holds up the waiters behind it. One relay per process
    (:func:`thread_relay`), as the GIL it paces is per process.
    """

    def __init__(self, depth: int = RELAY_DEPTH) -> None:
        self.depth = depth
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._queue: collections.deque[Waiter] = collections.deque()
        self._turns = 0  # waiters woken that have not taken their decision yet

    def wake(self, waiter: Waiter) -> None:
        with self._lock:
            if waiter.place != _NEW:
                return  # left already, or woken already
            if not waiter.asleep:
                waiter.place = _DONE  # busy: it finds the event set when it next waits
            elif self._turns < self.depth:
                waiter.place = _TURN
                self._turns += 1
            else:
                waiter.place = _QUEUED
                self._queue.append(waiter)
                return
        waiter.event.set()

    def done(self, waiter: Waiter) -> None:
        with self._lock:
            place, waiter.place = waiter.place, _DONE
            if place != _TURN:
                return  # a queued waiter that leaves is skipped when its turn comes
            woken = self._pass_turn()
        for other in woken:
            other.event.set()

    def _pass_turn(self) -> list[Waiter]:
        """Give a finished turn to the next waiter asleep in the queue (lock held);
        the busy ones met on the way are woken without a turn."""
        woken = []
        while self._queue:
            waiter = self._queue.popleft()
            if waiter.place != _QUEUED:
                continue
            woken.append(waiter)
            if waiter.asleep:
                waiter.place = _TURN
                return woken
            waiter.place = _DONE
        self._turns -= 1
        return woken

    @property
    def queued(self) -> int:
        """Waiters handed a message and not woken yet (for tests)."""
        with self._lock:
            return sum(1 for w in self._queue if w.place == _QUEUED)

    @property
    def turns(self) -> int:
        """Waiters woken with a turn they have not given back yet (for tests)."""
        with self._lock:
            return self._turns


_relay: Relay | None = None


def thread_relay() -> Relay:
    """This process's relay (a new one after fork: the parent's threads are not here).

    No lock: one held by another thread at a fork would never be released in the
    child. Two threads racing here make two relays, each whole for its waiters.
    """
    global _relay
    relay = _relay
    if relay is None or relay.pid != os.getpid():
        relay = _relay = Relay()
    return relay
