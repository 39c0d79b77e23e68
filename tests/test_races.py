"""Races between real processes: exact counts, one trip, exactly the permitted trials.

The processes are forked, and each one creates its Redis client and breaker after the
fork (no shared sockets). They bind first, then start together at a barrier, so their
calls really overlap. Time does not pass by itself: the trial test drives one virtual
clock in shared memory, read by every process (the shared state stores absolute
deadlines, so they must agree on the time), and synchronises each phase explicitly.
"""

from __future__ import annotations

import multiprocessing as mp
from collections import Counter
from typing import Any

import pytest
import redis

from redisbreaker import Backoff, CircuitOpenError, SharedBreaker, State
from redisbreaker.testing import VirtualClock
from tests.helpers import Boom

CTX = mp.get_context("fork")
WAIT = 30.0  # seconds any process waits for another before the test fails (never hangs)


class SharedClock(VirtualClock):
    """A :class:`VirtualClock` in shared memory: forked processes read the same time."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        super().__init__(start)
        self._shared = CTX.Value("d", start)

    def now(self) -> float:
        return float(self._shared.value)

    def now_ms(self) -> int:
        return int(self.now() * 1000)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock does not go back; got advance({seconds!r})")
        with self._shared.get_lock():
            self._shared.value += seconds


def _run_all(target: Any, args_for: list[tuple[Any, ...]]) -> list[Any]:
    queue = CTX.Queue()
    start = CTX.Barrier(len(args_for))
    procs = [CTX.Process(target=target, args=(queue, start, *a)) for a in args_for]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(WAIT)
        assert p.exitcode == 0
    return results


def _hammer_failures(
    queue: Any, start: Any, url: str, name: str, calls: int, fail_max: int
) -> None:
    opened: list[tuple[State, State]] = []
    b = SharedBreaker(
        name,
        client=redis.Redis.from_url(url),
        fail_max=fail_max,
        reset_timeout=60,
        on_state_change=lambda o, n: opened.append((o, n)),
    )
    b.sync()  # bound (scripts, hub) before the race starts
    start.wait(WAIT)
    ran = 0
    for _ in range(calls):
        try:
            b.call(_fail)
        except Boom:
            ran += 1
        except CircuitOpenError:
            pass
    queue.put((ran, opened))


def _fail() -> None:
    raise Boom()


def test_no_lost_updates(redis_url: str) -> None:
    """8 processes x 2000 failures with a huge fail_max: the count is exact."""
    results = _run_all(_hammer_failures, [(redis_url, "lossless", 2000, 10**9)] * 8)
    assert sum(ran for ran, _ in results) == 16000
    b = SharedBreaker("lossless", client=redis.Redis.from_url(redis_url), fail_max=10**9)
    assert b.snapshot().consecutive_failures == 16000


def test_exactly_one_trip(redis_url: str) -> None:
    """8 processes failing at once: one transition to open, one listener call cluster-wide."""
    results = _run_all(_hammer_failures, [(redis_url, "one-trip", 50, 5)] * 8)
    transitions = [t for _, opened in results for t in opened]
    assert transitions == [(State.CLOSED, State.OPEN)]
    b = SharedBreaker("one-trip", client=redis.Redis.from_url(redis_url), fail_max=5)
    snap = b.snapshot()
    assert snap.state is State.OPEN
    assert snap.trips == 1


PROCS = 16
RESET = 10.0  # the open period, in virtual seconds
TRIAL_OPTIONS: dict[str, Any] = {
    "fail_max": 1,
    "reset_timeout": RESET,
    "trial_lease": 60,
    "sync_interval": 1,
    "backoff": Backoff(multiplier=100, max=100, jitter=0),  # a failed trial: 100 s open
}


def _race_for_permits(
    queue: Any, url: str, permits: int, clock: SharedClock, sync: dict[str, Any]
) -> None:
    """One process: race for a permit, retry while the permits are held, retry after."""
    b = SharedBreaker(
        "trials", client=redis.Redis.from_url(url), half_open_permits=permits, **TRIAL_OPTIONS
    )
    clock.attach(b)
    assert b.sync().state is State.OPEN  # bound; sync takes no permit
    sync["bound"].wait(WAIT)
    phase = 1

    def trial() -> None:
        queue.put((phase, "trial"))
        sync["release"].wait(WAIT)  # hold the permit while the others try
        raise Boom()

    def attempt() -> str:
        try:
            b.call(trial)
        except Boom:
            return "ran"
        except CircuitOpenError as exc:
            queue.put((phase, f"refused {exc.state}"))
            return "refused"
        raise AssertionError("the trial cannot succeed")

    sync["start"].wait(WAIT)
    if attempt() == "ran":
        queue.put((2, "trial failed"))  # its failure has reached Redis
    else:
        phase = 2
        assert sync["retry"].wait(WAIT)
        attempt()
    phase = 3
    assert sync["again"].wait(WAIT)
    attempt()


def _collect(queue: Any, phase: int, count: int) -> Counter[str]:
    got: Counter[str] = Counter()
    for _ in range(count):
        at, what = queue.get(timeout=WAIT)
        assert at == phase, (at, what)
        got[what] += 1
    return got


@pytest.mark.parametrize("permits", [1, 3])
def test_half_open_admits_exactly_the_permitted_trials(redis_url: str, permits: int) -> None:
    """16 processes at the end of an open period: exactly half_open_permits trials run."""
    clock = SharedClock()
    b = SharedBreaker(
        "trials", client=redis.Redis.from_url(redis_url), half_open_permits=permits,
        **TRIAL_OPTIONS,
    )  # fmt: skip
    clock.attach(b)
    try:
        b.call(_fail)
    except Boom:
        pass
    assert b.snapshot().state is State.OPEN
    queue = CTX.Queue()
    sync: dict[str, Any] = {
        "bound": CTX.Barrier(PROCS + 1),
        "start": CTX.Barrier(PROCS + 1),
        "retry": CTX.Event(),
        "release": CTX.Event(),
        "again": CTX.Event(),
    }
    procs = [
        CTX.Process(target=_race_for_permits, args=(queue, redis_url, permits, clock, sync))
        for _ in range(PROCS)
    ]
    for p in procs:
        p.start()
    try:
        sync["bound"].wait(WAIT)  # all bound, and all saw the breaker open
        clock.advance(RESET)  # the open period is over; nobody has called since
        sync["start"].wait(WAIT)  # they call at once
        first = _collect(queue, 1, PROCS)
        trials = first["trial"]
        # The holders keep their permits; the others ask Redis again (their cached
        # views have expired) and must be refused.
        clock.advance(2)
        sync["retry"].set()
        second = _collect(queue, 2, PROCS - trials)
        sync["release"].set()  # the trials fail: the breaker re-opens for 100 s
        released = _collect(queue, 2, trials)
        snap = b.snapshot()
        clock.advance(2)
        sync["again"].set()
        third = _collect(queue, 3, PROCS)
    finally:  # on a failure, nobody waits for a phase that will not come
        for barrier in ("bound", "start"):
            sync[barrier].abort()
        for event in ("retry", "release", "again"):
            sync[event].set()
        for p in procs:
            p.join(WAIT)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs)
    assert first == {"trial": permits, "refused half_open": PROCS - permits}
    assert second == {"refused half_open": PROCS - permits}
    assert released == {"trial failed": permits}
    assert (snap.state, snap.trips) == (State.OPEN, 2)
    assert third == {"refused open": PROCS}
