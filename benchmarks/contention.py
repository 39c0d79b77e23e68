"""Suite 4: correctness under contention, pybreaker (Redis storage) vs redisbreaker.

N real processes (fork; each makes its own client) share one breaker:

* **lost updates**: every process records ``M`` failures at once into a breaker that
  cannot trip; lost = N*M minus the count in the store (pybreaker: its storage's
  ``fail_counter``; redisbreaker: ``snapshot().consecutive_failures``);
* **trips per incident**: every process hammers a failing call on a fresh closed
  breaker (``fail_max=5``) until it is refused; trips = how many times a process
  opened the breaker (pybreaker: calls of ``open()``; redisbreaker: transitions to
  open made by this process's script calls, via ``on_state_change``);
* **trial calls per recovery**: once the open period is over, every process makes one
  call at once (a 200 ms success); trials = calls that ran (a shared counter).
  The target is exactly ``half_open_permits`` (1).
"""

from __future__ import annotations

import contextlib
import ctypes
import statistics
import time
import uuid
from typing import Any

import redis

from benchmarks.harness import Config, SuiteResult, check, mp_context
from redisbreaker import CircuitOpenError, SharedBreaker, State
from redisbreaker.bench import Boom, fail

RESET = 1.0  # seconds open; pybreaker stores opened_at in whole seconds
TRIAL_SECONDS = 0.2


def _make(lib: str, url: str, name: str, fail_max: int, counters: Any) -> tuple[Any, Any]:
    """(call, open_error) for one process's breaker of ``lib``."""
    client = redis.Redis.from_url(url)
    if lib == "pybreaker":
        import pybreaker

        storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, client, namespace=name)
        cb = pybreaker.CircuitBreaker(fail_max=fail_max, reset_timeout=RESET,
                                      state_storage=storage)  # fmt: skip
        original = cb.open

        def counted_open() -> bool:
            with counters["trips"].get_lock():
                counters["trips"].value += 1
            return original()

        cb.open = counted_open  # type: ignore[method-assign]
        return cb.call, pybreaker.CircuitBreakerError

    def on_change(old: State, new: State) -> None:
        if new is State.OPEN:
            with counters["trips"].get_lock():
                counters["trips"].value += 1

    rb = SharedBreaker(name, client=client, fail_max=fail_max, reset_timeout=RESET,
                       on_state_change=on_change)  # fmt: skip
    return rb.call, CircuitOpenError


def _contender(lib: str, url: str, run_id: str, m: int, incidents: int, barrier: Any,
               counters: Any) -> None:  # fmt: skip
    # Lost updates.
    call, _ = _make(lib, url, f"{run_id}-lost", 2**31 - 1, counters)
    barrier.wait()
    for _ in range(m):
        with contextlib.suppress(Boom):
            call(fail)
    barrier.wait()

    def trial() -> None:
        with counters["trials"].get_lock():
            counters["trials"].value += 1
        time.sleep(TRIAL_SECONDS)

    for i in range(incidents):
        call, open_error = _make(lib, url, f"{run_id}-inc{i}", 5, counters)
        barrier.wait()  # start hammering together
        for _ in range(50):
            try:
                call(fail)
            except open_error:
                break
            except Boom:
                pass
        barrier.wait()  # all refused; the parent waits out the open period
        barrier.wait()  # go: one call each, at once
        with contextlib.suppress(open_error, Boom):
            call(trial)
        barrier.wait()  # done; the parent reads the counters


def stored_failures(lib: str, url: str, name: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        if lib == "pybreaker":
            import pybreaker

            storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, client,
                                                    namespace=name)  # fmt: skip
            return int(storage.counter)
        breaker = SharedBreaker(name, client=client, fail_max=2**31 - 1, reset_timeout=RESET)
        return breaker.snapshot().consecutive_failures
    finally:
        if lib == "pybreaker":  # the breaker's pub/sub thread keeps using the other one
            client.close()


def measure_n(cfg: Config, lib: str, n: int, m: int, incidents: int) -> dict[str, Any]:
    ctx = mp_context()
    run_id = f"bench-cont-{lib}-{uuid.uuid4().hex[:6]}"
    barrier = ctx.Barrier(n + 1)
    counters = {"trips": ctx.Value(ctypes.c_long, 0), "trials": ctx.Value(ctypes.c_long, 0)}
    args = (lib, cfg.url, run_id, m, incidents, barrier, counters)
    procs = [ctx.Process(target=_contender, args=args, daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    trips: list[int] = []
    trials: list[int] = []
    try:
        barrier.wait(120)
        barrier.wait(300)
        recorded = stored_failures(lib, cfg.url, f"{run_id}-lost")
        for _ in range(incidents):
            counters["trips"].value = 0
            counters["trials"].value = 0
            barrier.wait(120)
            barrier.wait(120)
            time.sleep(RESET + 1.1)  # pybreaker's opened_at is whole seconds
            barrier.wait(120)
            barrier.wait(120)
            trips.append(counters["trips"].value)
            trials.append(counters["trials"].value)
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
    return {
        "lib": lib,
        "processes": n,
        "failures_each": m,
        "expected": n * m,
        "recorded": recorded,
        "lost_updates": n * m - recorded,
        "trips_per_incident": trips,
        "trials_per_recovery": trials,
    }


def run(cfg: Config) -> SuiteResult:
    ns = cfg.pick([8, 16, 32], [3])
    m = cfg.pick(200, 10)
    incidents = cfg.pick(3, 1)
    libs = ["pybreaker", "redisbreaker"]
    try:
        import pybreaker  # noqa: F401
    except ImportError:
        libs = ["redisbreaker"]
    data = [measure_n(cfg, lib, n, m, incidents) for n in ns for lib in libs]
    result = SuiteResult(
        suite="contention",
        title="Correctness under contention (N processes, one breaker)",
        columns=["library", "N", "lost updates", "of", "trips/incident (median, max)",
                 "trials/recovery (median, max)"],
    )  # fmt: skip
    for d in data:
        result.rows.append([
            d["lib"], d["processes"], d["lost_updates"], d["expected"],
            f"{statistics.median(d['trips_per_incident']):g}, {max(d['trips_per_incident'])}",
            f"{statistics.median(d['trials_per_recovery']):g}, {max(d['trials_per_recovery'])}",
        ])  # fmt: skip
    rb = [d for d in data if d["lib"] == "redisbreaker"]
    lost = max(d["lost_updates"] for d in rb)
    trips = [t for d in rb for t in d["trips_per_incident"]]
    trials = [t for d in rb for t in d["trials_per_recovery"]]
    result.targets = [
        check("redisbreaker lost updates (worst N)", "== 0", float(lost), lambda v: v == 0),
        check("redisbreaker trips per incident (worst)", "== 1",
              float(max(trips, key=lambda t: abs(t - 1))), lambda v: v == 1),
        check("redisbreaker trials per recovery (worst)", "== half_open_permits (1)",
              float(max(trials, key=lambda t: abs(t - 1))), lambda v: v == 1),
    ]  # fmt: skip
    result.notes = [
        f"{m} failures per process for lost updates; {incidents} incidents per N; "
        f"fail_max=5, reset_timeout={RESET}s, trial call {TRIAL_SECONDS * 1000:.0f} ms.",
        "pybreaker's counter is a Redis INCR (atomic), but its trip and half-open "
        "decisions are taken in each process from separate reads.",
    ]
    result.data = {"runs": data}
    labels = [f"N={n}" for n in ns]
    series: dict[str, list[float]] = {}
    for lib in libs:
        series[f"{lib} trips"] = [max(d["trips_per_incident"]) for d in data if d["lib"] == lib]
        series[f"{lib} trials"] = [max(d["trials_per_recovery"]) for d in data if d["lib"] == lib]
    result.chart = {"labels": labels, "series": series, "ylabel": "count (worst incident)",
                    "log": False}  # fmt: skip
    return result
