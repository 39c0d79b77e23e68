"""The relay that wakes waiting threads a few at a time (tx_waiters.Relay), the latch
each thread waits on, and the hub's bookkeeping for them; no Redis."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time

import msgpack

from redisbreaker.events import ANY, EventHub
from redisbreaker.tx_core import Decision, Outcome, Tally, parse_message
from redisbreaker.tx_waiters import Latch, Relay, Waiter, decode, thread_relay
from tests.helpers import wait_for

DECISION = Decision("t", Outcome.COMMIT, Tally(3, 3, 0, 0, 0, 0))


class NoClient:
    """The client of a hub that starts no link (a hub holds its client weakly)."""


NO_CLIENT = NoClient()


def asleep(relay: Relay, n: int) -> list[Waiter]:
    """``n`` waiters whose threads are (as far as the relay knows) asleep on their event."""
    return [Waiter("t", Latch(), threading.Event(), relay, asleep=True) for _ in range(n)]


def woken(waiters: list[Waiter]) -> list[int]:
    return [i for i, w in enumerate(waiters) if w.event.is_set()]


def test_wakes_depth_at_a_time_and_each_taker_wakes_the_next() -> None:
    """Of five waiters handed a decision, two are woken; each that takes its decision
    wakes one more, in the order they were handed over."""
    relay = Relay(depth=2)
    waiters = asleep(relay, 5)
    for w in waiters:
        w.on_message(DECISION)
    assert woken(waiters) == [0, 1]
    assert (relay.turns, relay.queued) == (2, 3)
    assert waiters[1].take() is DECISION
    assert woken(waiters) == [0, 1, 2]
    for w in waiters[2:]:
        w.take()
    waiters[0].take()
    assert woken(waiters) == [0, 1, 2, 3, 4]
    assert (relay.turns, relay.queued) == (0, 0)


def test_a_waiter_that_leaves_passes_its_turn_or_is_skipped() -> None:
    """One that leaves with a turn (its read returned the decision first) gives the
    turn on; one that leaves while queued is never woken."""
    relay = Relay(depth=1)
    waiters = asleep(relay, 4)
    for w in waiters:
        w.on_message(DECISION)
    waiters[1].leave()  # queued: skipped
    waiters[0].leave()  # had the turn without taking it: passes it
    assert woken(waiters) == [0, 2]
    waiters[2].take()
    assert woken(waiters) == [0, 2, 3]
    waiters[3].leave()
    assert (relay.turns, relay.queued) == (0, 0)


def test_a_busy_waiter_is_woken_without_a_turn() -> None:
    """A waiter whose thread is not asleep on its event (a status read in flight) has
    its event set at once and holds no turn: it cannot hold up the others."""
    relay = Relay(depth=1)
    busy = Waiter("t", Latch(), threading.Event(), relay)
    waiters = asleep(relay, 2)
    busy.on_message(DECISION)
    for w in waiters:
        w.on_message(DECISION)
    assert busy.event.is_set()
    assert woken(waiters) == [0]
    assert relay.turns == 1
    busy.take()  # holds no turn: gives none
    assert woken(waiters) == [0]


def test_a_waiter_that_left_is_not_woken() -> None:
    """A decision handed over after the waiter left wakes nothing and takes no turn."""
    relay = Relay(depth=1)
    [gone] = asleep(relay, 1)
    gone.leave()
    gone.on_message(DECISION)
    assert not gone.event.is_set()
    assert relay.turns == 0


def test_settle_keeps_a_decision_and_drops_rechecks() -> None:
    """Before its first read a waiter forgets re-read requests, never a decision."""
    w = Waiter("t", Latch(), threading.Event())
    w.on_reset()
    w.settle()
    assert (w.event.is_set(), w.recheck) == (False, False)
    w.on_message(DECISION)
    w.settle()
    assert w.event.is_set()
    assert w.take() is DECISION


def test_300_threads_all_wake_never_more_than_depth_at_once() -> None:
    """300 threads asleep on their events, handed one decision: every one returns it,
    and at no moment do more than ``depth`` woken threads hold a turn."""
    relay = Relay(depth=2)
    waiters = [Waiter("t", Latch(), threading.Event(), relay) for _ in range(300)]
    got: list[Decision | None] = []
    most = [0]

    def run(w: Waiter) -> None:
        w.asleep = True
        w.event.wait(60)
        w.asleep = False
        most[0] = max(most[0], relay.turns)
        got.append(w.take())
        w.leave()

    threads = [threading.Thread(target=run, args=(w,), daemon=True) for w in waiters]
    for t in threads:
        t.start()
    assert wait_for(lambda: all(w.asleep for w in waiters), timeout=30)
    for w in waiters:
        w.on_message(DECISION)
    for t in threads:
        t.join(60)
    assert got == [DECISION] * 300
    assert 1 <= most[0] <= 2
    assert (relay.turns, relay.queued) == (0, 0)


def _child_relay(parent: int, out: multiprocessing.Queue[tuple[bool, int]]) -> None:
    relay = thread_relay()
    out.put((id(relay) == parent, relay.pid))


def test_a_forked_child_gets_a_relay_of_its_own() -> None:
    """After fork the child's relay is new (the parent's waiting threads are not in it)."""
    parent = thread_relay()
    assert thread_relay() is parent
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[tuple[bool, int]] = ctx.Queue()
    child = ctx.Process(target=_child_relay, args=(id(parent), out))
    child.start()
    same, pid = out.get(timeout=30)
    child.join(30)
    assert not same
    assert pid == child.pid != os.getpid()


def test_a_confirmation_resets_listeners_before_raising_the_ready_flag() -> None:
    """When the server confirms a channel, its listeners hear the reset while the
    channel's ready flag is still down: a waiter blocked on the flag then starts with
    its first read after the reset (Waiter.settle drops it) instead of reading twice."""
    dispatch = EventHub(NO_CLIENT).dispatch  # no link is started: only the bookkeeping
    ready = dispatch.ready("ch")
    seen: list[bool] = []

    class Listener:
        def on_message(self, message: object) -> None: ...

        def on_reset(self) -> None:
            seen.append(ready.is_set())

    listener = Listener()
    dispatch.add("ch", "t", listener, lambda payload: None)
    dispatch.wanted(0.0)
    link = object()
    dispatch.confirmed("ch", link)
    assert seen == [False]
    assert ready.is_set()
    dispatch.lost(["ch"], link)
    assert seen == [False, False]
    assert not ready.is_set()


def test_a_latch_is_an_event_for_one_waiting_thread() -> None:
    """Set, clear and wait as ``threading.Event``: a set latch lets every wait through
    until cleared; a clear one times out (at once for a timeout of 0 or less)."""
    latch = Latch()
    assert not latch.is_set()
    assert latch.wait(0) is False
    assert latch.wait(-1) is False
    assert latch.wait(0.01) is False
    latch.set()
    latch.set()  # twice: still one set
    assert latch.is_set()
    assert latch.wait() is True
    assert latch.wait(0) is True  # stays set
    latch.clear()
    latch.clear()
    assert not latch.is_set()
    assert latch.wait(0) is False
    latch.set()
    assert latch.wait(threading.TIMEOUT_MAX * 2) is True  # clamped, as Event's


def test_a_latch_wakes_its_thread_and_survives_racing_setters() -> None:
    """A thread blocked in wait() returns once another thread sets the latch; four
    threads setting it while its own thread clears and waits never break it (no
    double release of its lock)."""
    latch, woke = Latch(), threading.Event()

    def sleeper() -> None:
        if latch.wait(60):
            woke.set()

    thread = threading.Thread(target=sleeper, daemon=True)
    thread.start()
    latch.set()
    assert woke.wait(60)
    thread.join(60)

    stop = threading.Event()
    errors: list[BaseException] = []

    def setter() -> None:
        try:
            while not stop.is_set():
                latch.set()
                time.sleep(0)  # lets the others (and the clearing thread) run
        except BaseException as exc:  # pragma: no cover - what the test looks for
            errors.append(exc)

    setters = [threading.Thread(target=setter, daemon=True) for _ in range(4)]
    for t in setters:
        t.start()
    for _ in range(500):
        latch.clear()
        assert latch.wait(60)  # a setter sets it again
    stop.set()
    for t in setters:
        t.join(60)
    assert errors == []
    assert latch.is_set() and latch.wait(0)


def test_a_final_message_drops_its_tags_listeners_at_delivery() -> None:
    """On a channel whose messages are final (a transaction's decision), delivering
    one hands it to the tag's waiters and forgets them at once: their own remove is
    then a no-op, a listener of every tag (ANY) stays, and a waiter that registers
    afterwards starts a group of its own. Other channels keep their listeners."""
    dispatch = EventHub(NO_CLIENT).dispatch
    payload = msgpack.packb(["t", "commit", "votes", "", "all voted yes", 1, 3, 3, 0, 9])
    assert parse_message(payload) is not None
    waiters = [Waiter("t", Latch(), threading.Event()) for _ in range(3)]
    heard: list[object] = []

    class Watcher:
        def on_message(self, message: object) -> None:
            heard.append(message)

        def on_reset(self) -> None: ...

    watcher = Watcher()
    for w in waiters:
        dispatch.add("tx", "t", w, decode, final=True)
    dispatch.add("tx", ANY, watcher, decode)
    dispatch.add("other", "t", waiters[0], decode)
    dispatch.deliver("tx", payload)
    assert all(w.decision is not None and w.event.is_set() for w in waiters)
    assert len(heard) == 1
    assert "t" not in dispatch.listeners["tx"]  # forgotten with no remove
    assert ANY in dispatch.listeners["tx"]
    for w in waiters:
        dispatch.remove("tx", "t", w)  # no-op
    assert "t" in dispatch.listeners["other"]
    late = Waiter("t", Latch(), threading.Event())
    dispatch.add("tx", "t", late, decode, final=True)
    assert set(dispatch.listeners["tx"]["t"]) == {late}
    dispatch.deliver("tx", payload)
    assert late.decision is not None
    assert len(heard) == 2
