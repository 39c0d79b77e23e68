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

``sync_rate`` is how often one process syncs one breaker. A reply (any script call)
makes the cached view good for ``sync_interval`` (T). How the view is renewed is the
fleet's ``strategy``:

* ``synced``, the library on one Redis server (standalone, Sentinel): each process's
  background syncer (``redisbreaker/syncer.py``) wakes every ``tick`` (a tenth of T,
  within 5 ms .. 1 s) and, when a breaker that counted something since its last script
  call has its view ending within a tick, sends it in ONE ``breaker_flush`` call with
  every other such breaker whose view is more than half over (``ALONG``). So a
  process's busy breakers fall into step: one call per ~0.9 T carries them all
  (:func:`synced`). Each breaker flushed costs ``c_flush``, each call ``c_flush_call``
  besides (both fitted to two measured depths).
* ``lazy``, the library before the syncer, or with ``background_sync=False``: the first
  call after the view ends sends the sync (``breaker_admit``, carrying the successes
  counted meanwhile), one script call per breaker (:func:`sync_rate`).
* ``batched``, an earlier proposal: the library's own ``breaker_report`` calls, one
  pipeline per process every ``BATCH_TICK`` x T (:func:`batched_rates`),
  ``c_pipe(n) = pipe_exec + pipe_net / n`` per breaker: one script call per breaker,
  as the syncer sends on Redis Cluster (there a script may touch one hash slot only,
  so each due breaker is its own ``breaker_flush``, by EVALSHA, in one pipeline per
  master; not modelled here).

A breaker that nobody calls is never synced, whatever the strategy, so it costs
nothing. Lazily, with calls arriving at random (Poisson, rate ``calls`` per second
for this breaker in this process) and a share ``p`` of them recorded (failures, slow
calls: each is a script call that also refreshes the view), the syncs form a renewal
process whose cycle ends at the first recorded call (rate ``f = p x calls``) or, if
none comes within T, at the first call after T::

    E[cycle] = (1 - e^(-fT)) / f + e^(-fT) / calls
    sync_rate = e^(-fT) / E[cycle]            -> 1 / (T + 1/calls) when f = 0

The constants depend on the load: a Redis that is nearly idle spends more per
request (caches go cold between requests, each request wakes the event loop alone)
than one near capacity (several clients served per wake-up). The suite measures
``c_sync`` and ``c_record`` both ways and sizes with the under-load values, which is
where sizing matters; below a tenth of a core the model then reads low.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

from redisbreaker.syncer import ALONG, CHUNK, MAX_TICK, MIN_TICK, TICK_FRACTION

# The batched flusher's period, as a share of sync_interval: a flushed view is good for
# T, so a flush every 0.9 T renews it before any call finds it stale.
BATCH_TICK = 0.9
# How a process syncs its breakers: ``synced``, the library's background syncer (its
# busy breakers in step: one breaker_flush call per ~0.9 T with all of them); ``lazy``, the
# library without it (background_sync=False: each breaker on the first call after its
# lease ends, one script call each); ``batched``, an earlier proposal sending the
# library's own report calls in one pipeline per tick.
STRATEGIES = ("synced", "lazy", "batched")
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
    flush: float | None = None  # one breaker in a breaker_flush call (synced)
    flush_call: float | None = None  # one breaker_flush call, besides its breakers
    pipe_exec: float | None = None  # c_pipe(n) = pipe_exec + pipe_net / n (batched)
    pipe_net: float | None = None

    def per_breaker(self, strategy: str, depth: float) -> float:
        """Server CPU per breaker synced, ``depth`` of them in one round trip: in one
        ``breaker_flush`` call (``synced``), or the library's report calls pipelined
        (``batched``)."""
        part, rest = (
            (self.flush, self.flush_call) if strategy == "synced"
            else (self.pipe_exec, self.pipe_net)
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
    strategy: str = "synced"  # one of STRATEGIES

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


def sync_tick(sync_interval: float) -> float:
    """The background syncer's period for breakers of this ``sync_interval`` (the
    library's ``Registry.tick``); it is also how early a view is renewed (the lead)."""
    return min(MAX_TICK, max(MIN_TICK, sync_interval * TICK_FRACTION))


# The states a breaker's view can be renewed into (synced strategy): at one of its
# process's steps (the syncer's calls that carry the busy breakers together), with
# nothing left to report (ON); or off the steps (a recorded call, a lazy sync, or a
# flush of its own), with successes still to report (OFF_P: the call that synced itself
# counted its own success) or without (OFF_E).
_ON, _OFF_P, _OFF_E = 0, 1, 2
_PHASES = 48  # midpoints over the phase of an OFF renewal between two steps
_STEPS = 48  # midpoints over when the first call after a missed step comes


@dataclass(frozen=True)
class Synced:
    """One process's background syncer at steady state (see :func:`synced`)."""

    step: float  # mean seconds between the process's steps
    at_steps: float  # flushes per second of one breaker in the steps
    own: float  # flushes per second of one breaker in a call of its own
    lazy: float  # lazy syncs per second of one breaker
    calls: float  # breaker_flush calls per second of the process

    @property
    def flushes(self) -> float:
        return self.at_steps + self.own


def _upto(rate: float, span: float) -> float:  # E[min(Exp(rate), span)]
    return span if rate <= 0.0 else -math.expm1(-rate * span) / rate


def _cycle(
    calls: float, share: float, t: float, first: float, own: float, pending: bool
) -> tuple[float, float, float, float, list[float]]:
    """From a renewal at 0 whose next step that takes it is at ``first`` and whose own
    due wake is at ``own`` (>= first, < t): expected seconds to the next renewal,
    flushes at a step, flushes of its own and lazy syncs on the way, and the next
    state's probabilities (ON, OFF_P, OFF_E)."""
    lam, f = calls, share * calls
    s = lam - f
    nxt = [0.0, 0.0, 0.0]
    # Until the step: a recorded call renews the view (OFF_E).
    time = _upto(f, first)
    fail = -math.expm1(-f * first)
    nxt[_OFF_E] += fail
    clean = 1.0 - fail
    at_step = clean if pending else clean * -math.expm1(-s * first)
    nxt[_ON] += at_step
    # Nothing counted by the step (no call at all): the next call decides.
    quiet = 0.0 if pending else math.exp(-lam * first)
    lazy = alone = 0.0
    if quiet > 0.0:
        left = t - first  # the view still good after the step
        time += quiet * _upto(lam, left)
        nxt[_OFF_E] += quiet * share * -math.expm1(-lam * left)  # first call recorded
        # The first call a success at first + x: counted, flushed at its own due wake
        # (or the next wake, if that has passed) unless a recorded call comes first.
        dx = left / _STEPS
        for i in range(_STEPS):
            x = (i + 0.5) * dx
            w = quiet * s * math.exp(-lam * x) * dx
            wait = max(0.0, own - first - x)
            time += w * _upto(f, wait)
            ok = math.exp(-f * wait)
            nxt[_OFF_E] += w  # renewed off the steps, by a recorded call or its own flush
            alone += w * ok
        # No call while the view lasts: the next call syncs itself.
        idle = quiet * math.exp(-lam * left)
        time += idle / lam
        lazy += idle
        nxt[_OFF_P] += idle * (1.0 - share)
        nxt[_OFF_E] += idle * share
    return time, at_step, alone, lazy, nxt


def _breaker(
    calls: float, share: float, t: float, step: float, own: float
) -> tuple[float, float, float]:
    """One breaker's (flushes at steps, own flushes, lazy syncs) per second, its process
    stepping every ``step`` seconds."""
    along = ALONG * t
    sums: list[list[float]] = []  # per state: time, at steps, alone, lazy
    nexts: list[list[float]] = []
    first_row = _cycle(calls, share, t, step, own, pending=False)
    sums.append(list(first_row[:4]))
    nexts.append(first_row[4])
    for pending in (True, False):  # OFF_P, OFF_E: averaged over the phase between steps
        total, nxt = [0.0] * 4, [0.0] * 3
        for k in range(_PHASES):
            to_step = step * (k + 0.5) / _PHASES  # from the renewal to the next step
            # Taken by the next step if its view has less than ALONG left by then;
            # otherwise at its own due wake, which the next step comes with.
            first = to_step if to_step >= along else own
            *part, went = _cycle(calls, share, t, first, own, pending)
            total = [a + b / _PHASES for a, b in zip(total, part, strict=True)]
            nxt = [a + b / _PHASES for a, b in zip(nxt, went, strict=True)]
        sums.append(total)
        nexts.append(nxt)
    pi = _stationary(nexts)
    cycle, at_steps, alone, lazy = (
        sum(p * r[i] for p, r in zip(pi, sums, strict=True)) for i in range(4)
    )
    return at_steps / cycle, alone / cycle, lazy / cycle


@functools.lru_cache(maxsize=1024)
def synced(calls: float, failure_share: float, sync_interval: float, breakers: int) -> Synced:
    """The library's background syncer (``redisbreaker/syncer.py``) at steady state,
    for one process calling each of its ``breakers`` ``calls`` times a second.

    The syncer wakes every ``tick``; a breaker is due at the first wake within a tick of
    its view's end (``own = ceil(T / tick - 1) x tick`` after its renewal: 0.9 T) if it
    counted something since its last script call, and when one is due, every other
    breaker that counted something and has less than ``ALONG x T`` left comes along. So
    the busy breakers go together, at the process's *steps*: a breaker renewed at one
    is due ``own`` later, and takes all the others with it. A breaker renewed off the
    steps (by a recorded call, a lazy sync, or a flush of its own) comes along at the
    next step if it is ``ALONG x T`` or more away; otherwise it is due on its own
    after ``own``, and that wake is the next step (it brings the others along): with
    off-step renewals at rate ``R`` per process, the step after one is pulled to
    ``ALONG x T + min(X, W)`` later (``X ~ Exp(R)``, ``W = own - ALONG x T``, plus
    half a tick to the wake grid) instead of ``own``. A breaker renewed off the steps
    within ``ALONG x T`` but more than ``W`` before a step is flushed alone. Each
    breaker is then a Markov renewal process (:func:`_cycle`) against its process's
    steps; the step interval and ``R`` are solved together. Calls: one per
    :data:`CHUNK` breakers per step (each breaker in it independently), one per
    breaker flushed on its own.
    """
    if calls <= 0.0 or breakers <= 0:
        return Synced(0.0, 0.0, 0.0, 0.0, 0.0)
    t = sync_interval
    tick = sync_tick(t)
    if t <= tick:
        raise ValueError(f"sync_interval {t} s is within one syncer tick ({tick} s)")
    own = max(1, math.ceil((t - tick) / tick - 1e-9)) * tick
    along = min(ALONG * t, own)
    window = own - along
    step, at_steps, alone, lazy = own, 0.0, 0.0, 0.0
    for _ in range(60):
        at_steps, alone, lazy = _breaker(calls, failure_share, t, step, own)
        # Off-step renewals per second of the process that may pull a step: recorded
        # calls and lazy syncs (a breaker's own flush mostly falls on a step's wake).
        r = breakers * (failure_share * calls + lazy)
        pulled = -math.expm1(-r * window)
        new = min(own, along + _upto(r, window) + pulled * tick / 2)
        if abs(new - step) < 1e-6 * t:
            step = new
            break
        step = 0.5 * (step + new)
    # Steps: one call per CHUNK breakers flushed in it (a step with none is no call).
    q = min(1.0, at_steps * step)
    chunks = sum(p * math.ceil(k / CHUNK) for k, p in enumerate(binomial(breakers, q)))
    # Alone: those renewed off the steps too close to the next to come along, and too
    # far to pull it, and those that missed a step (nothing counted) then got a call.
    r = breakers * (failure_share * calls + lazy)
    between = -math.expm1(-r * max(0.0, ALONG * t - window))
    # Those that missed a step then got a call are due together, ``own`` after it.
    calls_s = (chunks + between - math.expm1(-breakers * alone * step)) / step
    return Synced(step, at_steps, alone, lazy, calls_s)


def synced_rates(
    calls: float, failure_share: float, sync_interval: float, breakers: int = 1
) -> tuple[float, float]:
    """``(flushes, lazy syncs)`` per second of one breaker in one process of
    ``breakers`` under the library's background syncer (:func:`synced`)."""
    got = synced(calls, failure_share, sync_interval, breakers)
    return got.flushes, got.lazy


def _stationary(m: list[list[float]]) -> list[float]:
    """The stationary distribution of a 3-state chain (rows: next-state probabilities)."""
    pi = [1.0 / 3] * 3
    for _ in range(10_000):
        new = [sum(pi[i] * m[i][j] for i in range(3)) for j in range(3)]
        total = sum(new)
        new = [x / total for x in new]
        if max(abs(a - b) for a, b in zip(new, pi, strict=True)) < 1e-13:
            return new
        pi = new
    return pi


def flush_calls(breakers: int, calls: float, failure_share: float, sync_interval: float) -> float:
    """``breaker_flush`` calls per second of one process (synced; :func:`synced`)."""
    return synced(calls, failure_share, sync_interval, breakers).calls


def binomial(n: int, q: float) -> list[float]:
    """P(k of ``n`` are due), k = 0..n, each with probability ``q``."""
    if q >= 1.0:
        return [0.0] * n + [1.0]
    if q <= 0.0:
        return [1.0] + [0.0] * n
    lq, lr = math.log(q), math.log1p(-q)
    return [
        math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * lq
                 + (n - k) * lr)
        for k in range(n + 1)
    ]  # fmt: skip


@dataclass(frozen=True)
class Load:
    """What a fleet asks of Redis, per second, and the CPU it costs (1.0 = one core)."""

    syncs: float  # breakers synced (lazily, or flushed)
    sync_calls: float  # the script calls that took (fewer with breaker_flush)
    records: float
    deliveries: float  # events x subscribers
    transitions: float
    votes: float
    transactions: float
    connections: int
    sync_depth: float  # breakers per flush call or round trip (1 when lazy)
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
    if fleet.strategy == "synced":
        got = synced(fleet.calls, fleet.failure_share, fleet.sync_interval, fleet.breakers)
        lazy = got.lazy
        calls = fleet.processes * got.calls
        flushed = pairs * got.flushes
        if c.flush is None or c.flush_call is None:
            raise ValueError("no constants for strategy 'synced'")
        sync_us = flushed * c.flush + calls * c.flush_call + pairs * lazy * c.sync
        syncs = flushed + pairs * lazy
        sync_calls = calls + pairs * lazy
        depth = flushed / calls if calls else 1.0
    elif fleet.strategy == "batched":
        flushes, lazy = batched_rates(fleet.calls, fleet.sync_interval)
        tick = BATCH_TICK * fleet.sync_interval
        depth = fleet.breakers * flushes * tick  # breakers per round trip
        sync_us = pairs * (flushes * c.per_breaker(fleet.strategy, depth) + lazy * c.sync)
        syncs = pairs * (flushes + lazy)
        sync_calls = syncs
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
