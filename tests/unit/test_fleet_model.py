"""The capacity model's arithmetic (benchmarks/fleet_model.py): the sync rate of a lazily
synced breaker, the batched flush, and the largest fleet within a CPU budget."""

from __future__ import annotations

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
    largest,
    load,
    sync_rate,
)

C = Constants(sync=50.0, record=60.0, transition=100.0, event=2.0, vote=40.0, begin=200.0,
              conn=0.5, idle=1000.0, pipe_exec=25.0, pipe_net=50.0, flush_exec=3.0,
              flush_net=30.0)  # fmt: skip


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
                  transitions=2.0, votes=100.0, votes_per_tx=10)  # fmt: skip
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


def test_batched_costs_less_per_sync_than_lazy_when_busy() -> None:
    """Batched: more flushes (one per tick) but each shares its round trip with the
    process's other breakers; one multi-breaker call shares more."""
    shape = Fleet(processes=10, breakers=100, calls=50.0)
    lazy, batched, flush = (load(replace(shape, strategy=s), C) for s in STRATEGIES)
    assert batched.syncs > lazy.syncs
    assert batched.sync_depth == pytest.approx(100.0, rel=1e-6)
    assert flush.cpu["syncs"] < batched.cpu["syncs"] < lazy.cpu["syncs"]
    assert flush.syncs == pytest.approx(batched.syncs)
    assert flush.sync_calls == pytest.approx(10 / (BATCH_TICK * 1.0))  # one per process per tick
    assert batched.sync_calls == pytest.approx(batched.syncs)
    per_flush = 25.0 + 50.0 / 100.0
    assert batched.cpu["syncs"] == pytest.approx(batched.syncs * per_flush / 1e6, rel=1e-6)
    with pytest.raises(ValueError, match="strategy"):
        load(replace(shape, strategy="eager"), C)
    with pytest.raises(ValueError, match="constants"):
        load(replace(shape, strategy="flush"), replace(C, flush_exec=None))


def test_largest_is_the_last_fleet_within_budget() -> None:
    """largest() returns P with P within the budget and P + 1 over it."""
    shape = Fleet(processes=1, breakers=100, calls=5.0, failure_share=0.01, transitions=0.1)
    p = largest(shape, C, 0.5)
    assert load(shape.with_processes(p), C).total_cpu <= 0.5
    assert load(shape.with_processes(p + 1), C).total_cpu > 0.5
    assert largest(shape, C, 1e-9) == 0
