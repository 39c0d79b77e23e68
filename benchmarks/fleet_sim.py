"""Simulated fleets for the ``fleet`` suite, driven through the library itself.

:func:`run_library` forks a few OS processes (``workers``) that share the simulated
processes between them. Each simulated process is one ``redis.Redis`` client (its own
command connection) with its own pub/sub hub (its own subscriber connection and
thread), and B ``SharedBreaker`` objects on it. Calls arrive at random (Poisson,
``calls`` per second per breaker per process; each pair's first call at a random
moment within the first ``sync_interval``, so syncs do not march in step), and a
share fails. Strategy ``synced`` is the library as it is (each simulated process's
client has its own background syncer thread); ``lazy`` is the library with
``background_sync=False`` (as before the syncer); ``batched`` adds to that, per
simulated process, an earlier proposal (:class:`Flusher`). This checks the
model's rates (how many script calls the library really makes) as well as its
constants, up to P = 200 and B = 100 (two CPUs cannot drive 1000 simulated processes,
each with its own hub and syncer thread, on time), at the load the Python clients of
a small machine can offer;
``benchmarks/fleet_replay.py`` drives Redis harder with the library's requests.

Redis CPU is read by the parent from the server's own counters (``INFO cpu``), never
from wall time.
"""

from __future__ import annotations

import heapq
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from benchmarks.fleet_model import BATCH_TICK, Fleet
from benchmarks.harness import mp_context
from redisbreaker import scripts
from redisbreaker.bench import SCRIPT_COMMANDS, Boom
from redisbreaker.breaker import SharedBreaker
from redisbreaker.config import client_from_url

# Breakers in the fleets never trip on their own: transitions are a separate, chosen rate.
NEVER = 10**9


def ok() -> int:
    return 1


def boom() -> int:
    raise Boom("simulated failure")


# -- the server's own counters ---------------------------------------------------------------


@dataclass(frozen=True)
class Counters:
    """The server's CPU seconds and script calls at one moment."""

    at: float  # monotonic
    cpu: float  # used_cpu_user + used_cpu_sys
    scripts: int  # EVALSHA / FCALL / ... calls
    script_usec: int  # their INFO commandstats usec
    clients: int  # connected_clients

    @classmethod
    def read(cls, client: redis.Redis) -> Counters:
        info: dict[str, Any] = client.info("all")
        calls = usec = 0
        for name in SCRIPT_COMMANDS:
            stat = info.get(f"cmdstat_{name}")
            if isinstance(stat, dict):
                calls += int(stat["calls"])
                usec += int(stat["usec"])
        cpu = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        return cls(time.monotonic(), cpu, calls, usec, int(info["connected_clients"]))


@dataclass(frozen=True)
class Delta:
    """What the server did between two readings."""

    seconds: float
    cpu: float
    scripts: int
    script_usec: int
    clients: int  # connected when the window began

    @classmethod
    def between(cls, a: Counters, b: Counters) -> Delta:
        return cls(b.at - a.at, b.cpu - a.cpu, b.scripts - a.scripts,
                   b.script_usec - a.script_usec, a.clients)  # fmt: skip

    @property
    def cpu_share(self) -> float:
        """Redis CPU as a share of one core."""
        return self.cpu / self.seconds if self.seconds > 0 else 0.0


# -- running workers ------------------------------------------------------------------------


@dataclass
class Run:
    """One fleet's measurement: the server's counters over the window and the workers'."""

    delta: Delta
    workers: list[dict[str, Any]] = field(default_factory=list)

    def total(self, key: str) -> float:
        return float(sum(w.get(key, 0) for w in self.workers))


def drive(
    url: str, target: Callable[..., None], shares: Sequence[Any], args: tuple[Any, ...],
    warm: float, window: float, during: Callable[[float], None] | None = None,
) -> Run:  # fmt: skip
    """Fork one worker per share, start them together, read the server's counters over
    ``[start + warm, start + warm + window]``; ``during(end)`` runs in this process
    meanwhile (the fleet's transitions and votes)."""
    ctx = mp_context()
    start_at = ctx.Value("d", 0.0)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=target, args=(url, share, start_at, out, *args), daemon=True)
        for share in shares
    ]
    for p in procs:
        p.start()
    info = redis.Redis.from_url(url)
    try:
        for _ in procs:
            kind, payload = out.get(timeout=600)
            if kind == "error":
                raise RuntimeError(f"fleet worker failed: {payload}")
        start = time.monotonic() + 0.5
        start_at.value = start
        sleep_until(start + warm)
        before = Counters.read(info)
        end = start + warm + window
        if during is not None:
            during(end)
        sleep_until(end)
        after = Counters.read(info)
        results = []
        for _ in procs:
            kind, payload = out.get(timeout=600)
            if kind == "error":
                raise RuntimeError(f"fleet worker failed: {payload}")
            results.append(payload)
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
        info.close()
    return Run(Delta.between(before, after), results)


def sleep_until(t: float) -> None:
    while (left := t - time.monotonic()) > 0:
        time.sleep(min(left, 0.2))


def wait_start(start_at: Any) -> float:
    while start_at.value == 0.0:
        time.sleep(0.01)
    return float(start_at.value)


def split(n: int, parts: int) -> list[range]:
    """``range(n)`` in ``parts`` nearly equal consecutive pieces (none empty)."""
    parts = max(1, min(parts, n))
    bounds = [n * i // parts for i in range(parts + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(parts)]


# -- the library's own breakers -----------------------------------------------------------


def _queue(pipe: Any, caller: Any, keys: Sequence[str], args: list[Any]) -> None:
    """Queue one breaker script call on ``pipe`` the way ``caller`` (the library's own
    caller of that script on this client) would send it alone: FCALL or EVALSHA."""
    mode = getattr(caller, "mode", None)
    if mode is not None and getattr(mode, "fcall", None) and hasattr(caller, "fcall_args"):
        pipe.execute_command("FCALL", *caller.fcall_args(keys, args))
        return
    script = caller if hasattr(caller, "sha") else getattr(caller, "script", None)
    if script is None or not getattr(script, "sha", None):
        raise RuntimeError(f"cannot pipeline {caller!r}")
    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)


class Flusher:
    """An earlier proposal for a batched sync, built from the library's own pieces (its
    core's ``flush_call`` and ``apply``, its script callers): every ``BATCH_TICK`` x
    ``sync_interval``, one pipeline carries a flush of every breaker this process called
    since its last flush, and each reply renews that breaker's view, so no call finds
    its view stale; a breaker not called since is left alone (it costs nothing; its
    next call syncs lazily, as today)."""

    def __init__(self, client: Any, breakers: list[SharedBreaker]) -> None:
        self.client = client
        self.breakers = breakers
        self.used = [False] * len(breakers)
        self.pipe = client.pipeline(transaction=False)
        self.flushes = self.round_trips = 0

    def tick(self) -> None:
        due = [i for i, used in enumerate(self.used) if used]
        if not due:
            return
        sent = []
        for i in due:
            self.used[i] = False
            core = self.breakers[i].core
            call = core.flush_call()
            _queue(
                self.pipe, scripts.for_client(self.client, call.script), core.key_list, call.args
            )
            sent.append((core, call))
        replies = self.pipe.execute(raise_on_error=False)
        now = time.monotonic()
        self.round_trips += 1
        self.flushes += len(sent)
        for (core, call), reply in zip(sent, replies, strict=True):
            if isinstance(reply, Exception):
                core.call_failed(call, reply)
                raise RuntimeError(f"batched flush failed: {reply}")
            core.apply(reply, now)
            if call.sender:
                core.sent(keep=False)


@dataclass(frozen=True)
class LibrarySpec:
    """What every worker of a library-driven fleet runs."""

    prefix: str
    fleet: Fleet
    seed: int
    warm: float
    window: float
    calls_until: float | None = None  # seconds after start; None: until the end


def _library_worker(url: str, procs: range, start_at: Any, out: Any, spec: LibrarySpec) -> None:
    try:
        out.put(("done", _library_fleet(url, procs, start_at, out, spec)))
    except Exception as exc:  # the parent must hear of it, not wait forever
        out.put(("error", f"{type(exc).__name__}: {exc}"))


def _library_fleet(
    url: str, procs: range, start_at: Any, out: Any, spec: LibrarySpec
) -> dict[str, Any]:
    fleet = spec.fleet
    rng = random.Random(spec.seed * 7919 + procs.start)
    sims: list[tuple[Any, list[SharedBreaker], Flusher | None]] = []
    for _ in procs:
        client = client_from_url(url, max_connections=4)
        breakers = [
            SharedBreaker(
                f"svc-{j}",
                client=client,
                prefix=spec.prefix,
                fail_max=NEVER,
                sync_interval=fleet.sync_interval,
                background_sync=fleet.strategy == "synced",
            )
            for j in range(fleet.breakers)
        ]
        for b in breakers:
            b.connect()  # joins this client's hub: its own subscriber connection
        flusher = Flusher(client, breakers) if fleet.strategy == "batched" else None
        sims.append((client, breakers, flusher))
    out.put(("ready", os.getpid()))
    start = wait_start(start_at)
    measure_from, end = start + spec.warm, start + spec.warm + spec.window
    stop_calls = end if spec.calls_until is None else start + spec.calls_until
    # The timeline: (when, pair) for calls, (when, -1 - sim) for a flusher's tick.
    heap: list[tuple[float, int]] = []
    b_count = fleet.breakers
    for k in range(len(sims)):
        for j in range(b_count):
            heap.append((start + rng.uniform(0.0, fleet.sync_interval), k * b_count + j))
        if sims[k][2] is not None:
            heap.append((start + rng.uniform(0.0, BATCH_TICK * fleet.sync_interval), -1 - k))
    heapq.heapify(heap)
    tick = BATCH_TICK * fleet.sync_interval
    calls = failures = late = 0
    worst = 0.0
    cpu0 = os.times()
    while heap:
        when, what = heap[0]
        if when >= end:
            break
        now = time.monotonic()
        if when > now:
            time.sleep(min(when - now, 0.05))
            continue
        heapq.heappop(heap)
        lag = now - when
        counted = when >= measure_from
        if counted:
            worst = max(worst, lag)
            late += lag > 0.1
        if what < 0:
            flusher = sims[-1 - what][2]
            assert flusher is not None
            flusher.tick()
            heapq.heappush(heap, (when + tick, what))
            continue
        k, j = divmod(what, b_count)
        _client, breakers, flusher = sims[k]
        fails = rng.random() < fleet.failure_share
        try:
            breakers[j].call(boom if fails else ok)
        except Boom:
            pass
        if flusher is not None:
            flusher.used[j] = True
        if counted:
            calls += 1
            failures += fails
        if fleet.calls > 0:
            later = when + rng.expovariate(fleet.calls)
            if later < stop_calls:
                heapq.heappush(heap, (later, what))
    cpu1 = os.times()
    sleep_until(end)  # the processes stay connected (and subscribed) to the end
    flushers = [f for _c, _b, f in sims if f is not None]
    return {
        "calls": calls, "failures": failures, "late": late, "worst_lag_s": worst,
        "client_cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
        "flush_round_trips": sum(f.round_trips for f in flushers),
        "flushes": sum(f.flushes for f in flushers),
    }  # fmt: skip


def run_library(
    url: str, fleet: Fleet, *, prefix: str, warm: float, window: float, workers: int,
    seed: int = 1, calls_until: float | None = None,
    during: Callable[[float], None] | None = None,
) -> Run:  # fmt: skip
    """Run ``fleet`` through the library; the server's counters over the window."""
    spec = LibrarySpec(prefix, fleet, seed, warm, window, calls_until)
    return drive(url, _library_worker, split(fleet.processes, workers), (spec,), warm, window,
                  during)  # fmt: skip
