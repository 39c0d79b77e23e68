"""The capacity model: Redis CPU of a fleet of breakers, from a few measured constants.

No I/O: the ``fleet`` suite measures the constants and the fleets, this module does
the arithmetic (and ``tests/unit/test_fleet_model.py`` pins it). Costs are server CPU
(``INFO cpu`` ``used_cpu_user + used_cpu_sys``) in microseconds; a result of 1.0 is
one Redis core busy all the time::

    CPU = c_idle + connections x c_conn
        + breakers x processes x sync_rate x c_sync
        + (recorded failures and slow calls)/s x c_record
        + transitions/s x (c_transition + subscribers x c_event)
        + votes/s x c_vote + transactions/s x c_begin

``sync_rate`` is how often one process syncs one breaker. The library syncs lazily:
a reply (any script call) makes the cached view good for ``sync_interval`` (T), and
the first call after that sends the sync (``breaker_admit``, carrying the successes
counted meanwhile). A breaker that nobody calls is never synced, so it costs nothing;
a busy one costs one sync per T. With calls arriving at random (Poisson, rate ``calls``
per second for this breaker in this process) and a share ``p`` of them recorded
(failures, slow calls: each is a script call that also refreshes the view), the
syncs form a renewal process whose cycle ends at the first recorded call (rate
``f = p x calls``) or, if none comes within T, at the first call after T::

    E[cycle] = (1 - e^(-fT)) / f + e^(-fT) / calls
    sync_rate = e^(-fT) / E[cycle]            -> 1 / (T + 1/calls) when f = 0

The ``batched`` and ``flush`` strategies are the proposed design (see the benchmarks
README): each process flushes, every ``BATCH_TICK`` x T, every breaker it called since
its last flush, in one round trip per Redis node (:func:`batched_rates`): the
library's flush calls pipelined, ``c_pipe(n) = pipe_exec + pipe_net / n`` per
breaker, or one multi-breaker call, ``c_flush(n) = flush_exec + flush_net / n``
(each fitted to two measured depths).

The constants depend on the load: a Redis that is nearly idle spends more per
request (caches go cold between requests, each request wakes the event loop alone)
than one near capacity (several clients served per wake-up). The suite measures
``c_sync`` and ``c_record`` both ways and sizes with the under-load values, which is
where sizing matters; below a tenth of a core the model then reads low.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

# The batched flusher's period, as a share of sync_interval: a flushed view is good for
# T, so a flush every 0.9 T renews it before any call finds it stale.
BATCH_TICK = 0.9
# How a process syncs its breakers: ``lazy``, the library today (each breaker on the
# first call after its lease ends, one script call each); ``batched``, the proposed
# flusher sending the library's own flush calls in one pipeline per tick; ``flush``,
# the same flusher sending one multi-breaker call (a prototype script, see
# benchmarks/fleet_costs.py).
STRATEGIES = ("lazy", "batched", "flush")
# Connections each process holds to one Redis server: its command connection and its
# pub/sub hub's connection.
CONNECTIONS_PER_PROCESS = 2


@dataclass(frozen=True)
class Constants:
    """Server CPU per operation, in µs (``conn``: per connection per second)."""

    sync: float  # one lazy sync: a breaker_admit carrying the pending successes
    record: float  # one recorded failure or slow call: a breaker_report
    transition: float  # the script call that makes a transition, no subscriber
    event: float  # one event delivered to one subscriber
    vote: float  # one vote (tx_vote)
    begin: float  # one transaction begun (tx_begin)
    conn: float = 0.0  # an idle connection, per second (serverCron)
    idle: float = 0.0  # the server doing nothing, per second (its cron)
    pipe_exec: float | None = None  # c_pipe(n) = pipe_exec + pipe_net / n (batched)
    pipe_net: float | None = None
    flush_exec: float | None = None  # c_flush(n) = flush_exec + flush_net / n (flush)
    flush_net: float | None = None

    def per_breaker(self, strategy: str, depth: float) -> float:
        """Server CPU per breaker flushed, ``depth`` of them in one round trip: the
        library's flush calls pipelined (``batched``), or one call of the prototype
        multi-breaker flush (``flush``)."""
        part, rest = (
            (self.pipe_exec, self.pipe_net) if strategy == "batched"
            else (self.flush_exec, self.flush_net)
        )  # fmt: skip
        if part is None or rest is None:
            raise ValueError(f"no constants for strategy {strategy!r}")
        return part + rest / max(1.0, depth)


def fit_pipeline(
    depth_a: float, cost_a: float, depth_b: float, cost_b: float
) -> tuple[float, float]:
    """``(exec, net)`` with ``cost = exec + net / depth`` through two measured points."""
    if depth_a == depth_b:
        raise ValueError("two different pipeline depths are needed")
    net = (cost_a - cost_b) / (1.0 / depth_a - 1.0 / depth_b)
    return cost_a - net / depth_a, net


@dataclass(frozen=True)
class Fleet:
    """P processes, each using the same B breakers, and the fleet's other traffic."""

    processes: int
    breakers: int
    calls: float  # calls per second, per breaker per process
    failure_share: float = 0.0  # share of calls recorded (failures and slow calls)
    sync_interval: float = 1.0
    transitions: float = 0.0  # per second, fleet-wide
    votes: float = 0.0  # per second, fleet-wide
    votes_per_tx: int = 100
    subscribers: int | None = None  # processes hearing each event (None: all of them)
    strategy: str = "lazy"  # one of STRATEGIES

    @property
    def pairs(self) -> int:
        return self.processes * self.breakers

    def with_processes(self, processes: int) -> Fleet:
        return replace(self, processes=processes)


def sync_rate(calls: float, failure_share: float, sync_interval: float) -> float:
    """Lazy syncs per second of one breaker in one process (see the module docstring)."""
    if calls <= 0.0:
        return 0.0
    t, f = sync_interval, failure_share * calls
    if f <= 0.0:
        return 1.0 / (t + 1.0 / calls)
    quiet = math.exp(-f * t)  # no recorded call within the lease
    cycle = (1.0 - quiet) / f + quiet / calls
    return quiet / cycle


def batched_rates(calls: float, sync_interval: float) -> tuple[float, float]:
    """``(flushes, lazy syncs)`` per second of one breaker in one process under the
    batched strategy.

    A flush at a tick makes the view good for T; the next tick comes ``tick =
    BATCH_TICK x T`` later. A breaker called in between (probability ``1 - a``, ``a =
    e^(-calls x tick)``) is flushed at that next tick. One that was not is left alone:

    * called before its lease ends (the ``T - tick`` after that tick; probability
      ``1 - b``, ``b = e^(-calls x (T - tick))``), it is flushed at the tick after,
      but a call between its lease's end and that tick (``2 tick - T`` long) syncs
      lazily first;
    * otherwise its next call syncs lazily, and the tick after that call flushes it.

    The cycle from one flush to the next, in ticks, and the lazy syncs in it::

        E = (1 - a) + a (1 - b) 2 + a b (2 + e^(calls (T - 2 tick)) / (1 - a))
        lazy = a b + a (1 - b) (1 - e^(-calls (2 tick - T)))
    """
    if calls <= 0.0:
        return 0.0, 0.0
    tick = BATCH_TICK * sync_interval
    a = math.exp(-calls * tick)
    b = math.exp(-calls * (sync_interval - tick))
    late = 2.0 + math.exp(calls * (sync_interval - 2.0 * tick)) / -math.expm1(-calls * tick)
    cycle = tick * ((1.0 - a) + a * (1.0 - b) * 2.0 + a * b * late)
    gap = max(0.0, 2.0 * tick - sync_interval)
    lazy = a * b + a * (1.0 - b) * -math.expm1(-calls * gap)
    return 1.0 / cycle, lazy / cycle


@dataclass(frozen=True)
class Load:
    """What a fleet asks of Redis, per second, and the CPU it costs (1.0 = one core)."""

    syncs: float  # breakers synced (lazily, or flushed)
    sync_calls: float  # the script calls that took (fewer with a multi-breaker flush)
    records: float
    deliveries: float  # events x subscribers
    transitions: float
    votes: float
    transactions: float
    connections: int
    sync_depth: float  # syncs per round trip (1 when lazy)
    cpu: dict[str, float]

    @property
    def total_cpu(self) -> float:
        return sum(self.cpu.values())

    @property
    def script_calls(self) -> float:
        """Script calls per second (what ``INFO commandstats`` counts as EVALSHA/FCALL)."""
        return self.sync_calls + self.records + self.transitions + self.votes + self.transactions


def load(fleet: Fleet, c: Constants) -> Load:
    """The model's prediction for ``fleet``."""
    pairs = fleet.pairs
    records = pairs * fleet.calls * fleet.failure_share
    if fleet.strategy in STRATEGIES[1:]:
        flushes, lazy = batched_rates(fleet.calls, fleet.sync_interval)
        tick = BATCH_TICK * fleet.sync_interval
        depth = fleet.breakers * flushes * tick  # breakers per round trip
        sync_us = pairs * (flushes * c.per_breaker(fleet.strategy, depth) + lazy * c.sync)
        syncs = pairs * (flushes + lazy)
        sync_calls = syncs
        if fleet.strategy == "flush":  # one call per process per tick that has any due
            idle_tick = math.exp(-fleet.calls * tick * fleet.breakers)
            sync_calls = fleet.processes * (1.0 - idle_tick) / tick + pairs * lazy
    elif fleet.strategy == "lazy":
        syncs = pairs * sync_rate(fleet.calls, fleet.failure_share, fleet.sync_interval)
        depth, sync_us, sync_calls = 1.0, syncs * c.sync, syncs
    else:
        raise ValueError(f"unknown strategy {fleet.strategy!r}")
    subscribers = fleet.processes if fleet.subscribers is None else fleet.subscribers
    deliveries = fleet.transitions * subscribers
    transactions = fleet.votes / fleet.votes_per_tx if fleet.votes_per_tx else 0.0
    connections = fleet.processes * CONNECTIONS_PER_PROCESS
    us = {
        "idle": c.idle + connections * c.conn,
        "syncs": sync_us,
        "records": records * c.record,
        "events": fleet.transitions * c.transition + deliveries * c.event,
        "votes": fleet.votes * c.vote + transactions * c.begin,
    }
    return Load(
        syncs=syncs, sync_calls=sync_calls, records=records, deliveries=deliveries,
        transitions=fleet.transitions,
        votes=fleet.votes, transactions=transactions, connections=connections,
        sync_depth=max(1.0, depth), cpu={k: v / 1e6 for k, v in us.items()},
    )  # fmt: skip


def largest(fleet: Fleet, c: Constants, budget: float = 0.5) -> int:
    """The most processes (each with ``fleet.breakers`` breakers) whose Redis CPU stays
    within ``budget`` of one core. The cost grows with P (events reach every process),
    so a doubling search then a bisection finds it."""

    def fits(p: int) -> bool:
        return load(fleet.with_processes(p), c).total_cpu <= budget

    if not fits(1):
        return 0
    low, high = 1, 2
    while fits(high):
        low, high = high, high * 2
        if high > 1 << 40:
            return high  # nothing grows with P: no limit
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def error(model: float, measured: float) -> float | None:
    """(model - measured) / measured, or None when nothing was measured."""
    if measured <= 0.0:
        return None
    return (model - measured) / measured
