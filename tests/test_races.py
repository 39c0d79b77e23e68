"""Races between real processes: exact counts, one trip, exactly the permitted trials."""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

import pytest
import redis

from redisbreaker import Backoff, CircuitOpenError, SharedBreaker, State
from tests.helpers import Boom

CTX = mp.get_context("fork")


def _run_all(target: Any, args_for: list[tuple[Any, ...]]) -> list[Any]:
    queue = CTX.Queue()
    procs = [CTX.Process(target=target, args=(queue, *a)) for a in args_for]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return results


def _hammer_failures(queue: Any, url: str, name: str, calls: int, fail_max: int) -> None:
    # Everything Redis-related is created after fork: no shared sockets.
    opened: list[tuple[State, State]] = []
    b = SharedBreaker(
        name,
        client=redis.Redis.from_url(url),
        fail_max=fail_max,
        reset_timeout=60,
        on_state_change=lambda o, n: opened.append((o, n)),
    )
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


def _hammer_trials(queue: Any, url: str, name: str, permits: int, start: float) -> None:
    b = SharedBreaker(
        name,
        client=redis.Redis.from_url(url),
        fail_max=1,
        reset_timeout=0.5,
        half_open_permits=permits,
        backoff=Backoff(multiplier=100, max=100, jitter=0),
    )
    trials = 0

    def trial() -> None:
        nonlocal trials
        trials += 1
        time.sleep(0.2)  # hold the permit while the others try
        raise Boom()

    while time.time() < start + 1.5:
        try:
            b.call(trial)
        except (Boom, CircuitOpenError):
            pass
    queue.put(trials)


@pytest.mark.parametrize("permits", [1, 3])
def test_half_open_admits_exactly_the_permitted_trials(redis_url: str, permits: int) -> None:
    """16 processes at the end of an open period: exactly half_open_permits trials run."""
    b = SharedBreaker(
        "trials",
        client=redis.Redis.from_url(redis_url),
        fail_max=1,
        reset_timeout=0.5,
        half_open_permits=permits,
    )
    try:
        b.call(_fail)
    except Boom:
        pass
    assert b.snapshot().state is State.OPEN
    results = _run_all(_hammer_trials, [(redis_url, "trials", permits, time.time())] * 16)
    assert sum(results) == permits
    assert b.snapshot().state is State.OPEN  # the trials failed: re-opened, long backoff
