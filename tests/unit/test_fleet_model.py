"""The capacity model's arithmetic (benchmarks/fleet_model.py): the sync rates of a
breaker synced by the library's background syncer, of a lazily synced one, the batched
flush, and the largest fleet within a CPU budget."""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import replace

import pytest

from benchmarks.fleet_model import (
    BATCH_TICK,
    STRATEGIES,
    Constants,
    Fleet,
    batched_rates,
    fit_pipeline,
    flush_calls,
    largest,
    load,
    sync_rate,
    sync_tick,
    synced,
    synced_rates,
)
from redisbreaker.syncer import ALONG, CHUNK

C = Constants(sync=50.0, record=60.0, transition=100.0, event=2.0, vote=40.0, begin=200.0,
              conn=0.5, idle=1000.0, flush=18.0, flush_call=40.0, pipe_exec=25.0,
              pipe_net=50.0)  # fmt: skip


def _simulated_sync_rate(calls: float, share: float, t: float, seconds: float) -> float:
    """The library's lazy sync, played out on one breaker in one process: a reply makes
    the view good for ``t``; a call on a stale view syncs first; a recorded call is
    a script call of its own, which refreshes the view too."""
    rng = random.Random(7)
    now, expires, syncs = 0.0, 0.0, 0
    while now < seconds:
        now += rng.expovariate(calls)
        if now >= expires:
            syncs += 1
            expires = now + t
        if rng.random() < share:
            expires = now + t
    return syncs / seconds


@pytest.mark.parametrize(
    ("calls", "share", "t"), [(5.0, 0.0, 1.0), (0.5, 0.0, 5.0), (5.0, 0.05, 1.0), (20.0, 0.2, 1.0)]
)
def test_sync_rate_matches_the_lazy_sync_played_out(calls: float, share: float, t: float) -> None:
    """The renewal formula gives the rate a simulation of the lazy sync finds (within 3%)."""
    expected = _simulated_sync_rate(calls, share, t, seconds=200_000 / calls)
    assert sync_rate(calls, share, t) == pytest.approx(expected, rel=0.03)


def test_sync_rate_limits() -> None:
    """No calls: no syncs (an idle breaker costs nothing); no failures: 1 / (T + 1/calls);
    calls far faster than the lease: one sync per sync_interval."""
    assert sync_rate(0.0, 0.0, 1.0) == 0.0
    assert sync_rate(4.0, 0.0, 1.0) == pytest.approx(1 / 1.25)
    assert sync_rate(1e6, 0.0, 2.0) == pytest.approx(0.5, rel=1e-5)
    assert sync_rate(1e6, 1e-12, 2.0) == pytest.approx(0.5, rel=1e-4)


def _simulated_batched(calls: float, t: float, seconds: float) -> tuple[float, float]:
    """The batched flusher played out on one breaker: every tick it flushes the breaker
    if it was called since the last flush; a call on a stale view syncs lazily."""
    rng = random.Random(11)
    tick = BATCH_TICK * t
    now, next_tick, expires, used = 0.0, tick, t, False
    flushes = lazy = 0
    next_call = rng.expovariate(calls)
    while now < seconds:
        if next_tick <= next_call:
            now = next_tick
            if used:
                flushes += 1
                expires, used = now + t, False
            next_tick += tick
        else:
            now = next_call
            if now >= expires:
                lazy += 1
                expires = now + t
            used = True
            next_call += rng.expovariate(calls)
    return flushes / seconds, lazy / seconds


@pytest.mark.parametrize(("calls", "t"), [(0.05, 1.0), (0.5, 1.0), (1.0, 5.0), (20.0, 1.0)])
def test_batched_rates_match_the_flusher_played_out(calls: float, t: float) -> None:
    """The batched cycle formula gives the flushes and lazy syncs a simulation finds."""
    flushes, lazy = _simulated_batched(calls, t, seconds=100_000 * t)
    got = batched_rates(calls, t)
    assert got[0] == pytest.approx(flushes, rel=0.03)
    assert got[1] == pytest.approx(lazy, rel=0.03, abs=1e-4 / t)


def test_batched_rates_limits() -> None:
    """Busy: one flush per tick and no lazy sync; idle: nothing at all."""
    assert batched_rates(0.0, 1.0) == (0.0, 0.0)
    flushes, lazy = batched_rates(1e4, 1.0)
    assert flushes == pytest.approx(1 / BATCH_TICK)
    assert lazy == pytest.approx(0.0, abs=1e-9)


def test_fit_pipeline_recovers_the_two_parts() -> None:
    """exec + net / depth through two depths gives back exec and net."""
    assert fit_pipeline(10, 25.0 + 50.0 / 10, 100, 25.0 + 50.0 / 100) == pytest.approx((25.0, 50.0))
    with pytest.raises(ValueError, match="different"):
        fit_pipeline(10, 1.0, 10, 2.0)


def test_load_adds_every_term() -> None:
    """Each term is its rate times its constant; 1.0 is one core."""
    fleet = Fleet(processes=10, breakers=5, calls=1e9, failure_share=0.0, sync_interval=1.0,
                  transitions=2.0, votes=100.0, votes_per_tx=10, strategy="lazy")  # fmt: skip
    got = load(fleet, C)
    assert got.syncs == pytest.approx(50.0)
    assert got.deliveries == pytest.approx(20.0)
    assert got.transactions == pytest.approx(10.0)
    us = 1000 + 20 * 0.5 + 50 * 50.0 + 2 * 100.0 + 20 * 2.0 + 100 * 40.0 + 10 * 200.0
    assert got.total_cpu == pytest.approx(us / 1e6)
    assert got.script_calls == pytest.approx(50 + 2 + 100 + 10)


def test_records_cost_their_own_calls() -> None:
    """Recorded failures and slow calls: processes x breakers x calls x share of them."""
    fleet = Fleet(processes=4, breakers=3, calls=10.0, failure_share=0.1)
    assert load(fleet, C).records == pytest.approx(4 * 3 * 10.0 * 0.1)


def _simulated_syncer(
    breakers: int, calls: float, share: float, t: float, seconds: float
) -> tuple[float, float, float]:
    """The library's background syncer played out on one process's breakers (the rules
    of redisbreaker/syncer.py and BreakerCore.background_call): every tick, when any
    breaker's view ends within a tick and it counted something since its last script
    call, it sends that one and every other that counted something and has less than
    ALONG x T left, one call per CHUNK; a call on an ended view syncs lazily; a recorded
    call is a script call of its own, which refreshes the view and carries what was
    counted. (flush calls, flushes per breaker, lazy syncs per breaker) per second."""
    tick = sync_tick(t)
    rng = random.Random(13)
    expires: list[float | None] = [None] * breakers
    pending = [False] * breakers
    heap = [(rng.uniform(0.0, t), j) for j in range(breakers)]  # staggered first use
    heapq.heapify(heap)
    wake, now = rng.uniform(0.0, tick), 0.0
    sent = flushes = lazy = 0
    eps = 1e-9  # (the syncer's own time between wakes breaks a tie towards "due")
    while now < seconds:
        if wake <= heap[0][0]:
            now = wake
            due = [j for j in range(breakers)
                   if pending[j] and now >= (expires[j] or math.inf) - tick - eps]  # fmt: skip
            if due:
                due += [j for j in range(breakers) if j not in due and pending[j]
                        and now >= (expires[j] or math.inf) - ALONG * t - eps]  # fmt: skip
                for j in due:
                    expires[j], pending[j] = now + t, False
                sent += -(-len(due) // CHUNK)
                flushes += len(due)
            wake += tick
        else:
            now, j = heapq.heappop(heap)
            end = expires[j]
            if end is None or now >= end:
                lazy += 1
                expires[j], pending[j] = now + t, False
            if rng.random() < share:
                expires[j], pending[j] = now + t, False
            else:
                pending[j] = True
            heapq.heappush(heap, (now + rng.expovariate(calls), j))
    return sent / seconds, flushes / seconds / breakers, lazy / seconds / breakers


@pytest.mark.parametrize(
    ("breakers", "calls", "share", "t"),
    [(1, 5.0, 0.01, 1.0), (10, 5.0, 0.01, 1.0), (100, 5.0, 0.01, 1.0), (10, 2.0, 0.01, 1.0),
     (100, 0.5, 0.01, 5.0), (10, 0.5, 0.01, 5.0), (100, 0.05, 0.01, 30.0),
     (20, 5.0, 0.0, 1.0), (3, 20.0, 0.05, 0.25)],
)  # fmt: skip
def test_synced_matches_the_syncer_played_out(
    breakers: int, calls: float, share: float, t: float
) -> None:
    """The model of a process's syncer (its breakers falling into step) gives the
    flushes a simulation of the syncer's rules finds within 10%, the flush calls within
    35% and the lazy syncs within 35% or 0.006/s (the last two are small next to the
    flushes)."""
    seconds = max(300 * t, 3000 / (calls * breakers) * t)
    sent, flushes, lazy = _simulated_syncer(breakers, calls, share, t, seconds)
    got = synced(calls, share, t, breakers)
    assert got.flushes == pytest.approx(flushes, rel=0.1)
    assert got.calls == pytest.approx(sent, rel=0.35)
    assert got.lazy == pytest.approx(lazy, rel=0.35, abs=6e-3)
    assert synced_rates(calls, share, t, breakers) == (got.flushes, got.lazy)
    assert flush_calls(breakers, calls, share, t) == got.calls


def test_busy_breakers_go_together() -> None:
    """Twenty busy breakers with staggered first use: after a short transient, one call
    per ~0.9 T carries them all (the syncer's own check: 12 calls in 10 s)."""
    sent, _flushes, _lazy = _simulated_syncer(20, 5.0, 0.0, 1.0, seconds=10.0)
    assert sent * 10 <= 14
    got = synced(1e5, 0.0, 1.0, 20)
    assert got.step == pytest.approx(0.9)
    assert got.calls == pytest.approx(1 / 0.9)
    assert got.flushes == pytest.approx(1 / 0.9)


def test_synced_rates_limits() -> None:
    """Busy: one flush every 9 ticks of T/10 (0.9 T), or T - 1 s when the tick is 1 s,
    and no lazy sync; idle: nothing at all; a view shorter than a tick is refused."""
    assert synced_rates(0.0, 0.0, 1.0) == (0.0, 0.0)
    flushes, lazy = synced_rates(1e5, 0.0, 1.0)
    assert flushes == pytest.approx(1 / 0.9)
    assert lazy == pytest.approx(0.0, abs=1e-9)
    assert synced_rates(1e5, 0.0, 30.0)[0] == pytest.approx(1 / 29.0)
    assert sync_tick(1.0) == pytest.approx(0.1)
    assert sync_tick(30.0) == 1.0 and sync_tick(0.001) == 0.005
    with pytest.raises(ValueError, match="tick"):
        synced_rates(1.0, 0.0, 0.004)


def test_synced_costs_a_flush_per_breaker_and_an_overhead_per_call() -> None:
    """Synced: each flushed breaker costs c_flush, each call c_flush_call, each lazy sync
    c_sync; busy, a process sends one call per 0.9 T with all its breakers."""
    shape = Fleet(processes=10, breakers=99, calls=1e5, strategy="synced")
    got = load(shape, C)
    assert got.syncs == pytest.approx(10 * 99 / 0.9)
    assert got.sync_calls == pytest.approx(10 / 0.9)
    assert got.sync_depth == pytest.approx(99.0)
    assert got.cpu["syncs"] == pytest.approx((got.syncs * 18.0 + got.sync_calls * 40.0) / 1e6)
    assert got.script_calls == pytest.approx(got.sync_calls)
    # More than 100 due together: one call per 100 (CHUNK).
    big = load(replace(shape, breakers=250), C)
    assert big.sync_calls == pytest.approx(10 * 3 / 0.9)
    # Slower calls: some breakers go stale and their next call syncs lazily.
    slow = load(replace(shape, calls=0.5, failure_share=0.01), C)
    s = synced(0.5, 0.01, 1.0, 99)
    us = 990 * s.flushes * 18.0 + 10 * s.calls * 40.0 + 990 * s.lazy * 50.0
    assert slow.cpu["syncs"] == pytest.approx(us / 1e6)
    assert slow.sync_calls == pytest.approx(10 * s.calls + 990 * s.lazy)
    with pytest.raises(ValueError, match="constants"):
        load(shape, replace(C, flush=None))


def test_strategies_order_when_busy() -> None:
    """Busy, 100 breakers a process: the syncer's one call per step costs least; the
    batched pipeline less than the lazy sync, each still a script call per breaker."""
    shape = Fleet(processes=10, breakers=100, calls=50.0)
    synced, lazy, batched = (load(replace(shape, strategy=s), C) for s in STRATEGIES)
    assert batched.syncs > lazy.syncs
    assert batched.sync_depth == pytest.approx(100.0, rel=1e-6)
    assert synced.cpu["syncs"] < batched.cpu["syncs"] < lazy.cpu["syncs"]
    assert batched.sync_calls == pytest.approx(batched.syncs)
    per_flush = 25.0 + 50.0 / 100.0
    assert batched.cpu["syncs"] == pytest.approx(batched.syncs * per_flush / 1e6, rel=1e-6)
    with pytest.raises(ValueError, match="strategy"):
        load(replace(shape, strategy="eager"), C)
    with pytest.raises(ValueError, match="constants"):
        load(replace(shape, strategy="batched"), replace(C, pipe_exec=None))


def test_largest_is_the_last_fleet_within_budget() -> None:
    """largest() returns P with P within the budget and P + 1 over it."""
    for strategy in STRATEGIES:
        shape = Fleet(processes=1, breakers=100, calls=5.0, failure_share=0.01,
                      transitions=0.1, strategy=strategy)  # fmt: skip
        p = largest(shape, C, 0.5)
        assert load(shape.with_processes(p), C).total_cpu <= 0.5
        assert load(shape.with_processes(p + 1), C).total_cpu > 0.5
        assert largest(shape, C, 1e-9) == 0
