"""Suite 1: call overhead in the closed state, success and failure, beside the anchors.

Every case is one call of a trivial function (or one that raises) through a breaker
that never trips, interleaved with the others in one run. Round trips per call are
counted afterwards, one case at a time (see :mod:`redisbreaker.bench`).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import redis

from benchmarks.harness import (
    Case,
    Config,
    SuiteResult,
    check,
    count_round_trips,
    counting_client,
    fmt,
    measure,
    unavailable,
)
from redisbreaker import bench
from redisbreaker.bench import Boom, ValueGate, bench_name, ratio

INTERLOCK_VERSION = "2.8.2"  # pinned in pyproject.toml, dependency group "bench"

LIBRARIES = [
    "bare call",
    "pybreaker in memory",
    "per-host Value gate + pybreaker in memory",
    "pybreaker + Redis",
    "interlock-cb + Redis",
    "redisbreaker",
]


class Paused(Exception):
    """The per-host gate refused (never raised here: the gate stays open)."""


def seed_cases() -> list[Case]:
    """The per-host prior art's per-task cost: a ``Value`` gate check, then pybreaker."""
    label = "per-host Value gate + pybreaker in memory"
    try:
        import pybreaker
    except ImportError:
        return [
            unavailable(f"{label} / {k}", "pybreaker not installed") for k in ("success", "failure")
        ]
    gate = ValueGate()
    paused_until = gate.paused_until
    cb = pybreaker.CircuitBreaker(fail_max=10**9, reset_timeout=60)

    def guarded(fn: Any) -> Any:
        pause_until_ts = paused_until.value
        if pause_until_ts > 0.0 and datetime.now(UTC).timestamp() < pause_until_ts:
            raise Paused
        return cb.call(fn)

    return bench.call_cases(label, guarded, Boom)


def interlock_cases(url: str) -> tuple[list[Case], list[Any]]:
    """interlock-cb with its Redis coordination (``RedisStorage``), never tripping."""
    label = "interlock-cb + Redis"
    try:
        from interlock import CircuitBreaker
        from interlock import Config as IConfig
        from interlock.integrations.redis import RedisStorage
    except ImportError:
        why = f"interlock-cb not installed (pip install interlock-cb=={INTERLOCK_VERSION})"
        return [unavailable(f"{label} / {k}", why) for k in ("success", "failure")], []
    out: list[Case] = []
    breakers: list[Any] = []
    for kind in ("success", "failure"):
        client, counter = counting_client(url)
        cb = CircuitBreaker(
            name=bench_name(),
            # A rate threshold that can never be evaluated: the window (100) never
            # holds minimum_number_of_calls, so it stays closed through the failures.
            config=IConfig(failure_rate_threshold=1.0, minimum_number_of_calls=10**9),
            storage=RedisStorage(client),
        )
        breakers.append(cb)
        case = bench.call_cases(label, cb.call, Boom)[kind == "failure"]
        case.client, case.counter = client, counter
        case.note = "coordinates transitions only: closed-state outcomes stay local"
        out.append(case)
    return out, breakers


def run(cfg: Config) -> SuiteResult:
    calls = cfg.pick(20_000, 1_000)
    redis_calls = cfg.pick(300, 20)
    # Counted apart, in rounds long enough (0.3-0.6 s each) that a stretch of a slowed
    # server (this machine's come in runs of up to a second) cannot take the median.
    counted_calls = cfg.pick(2_000, 20)
    rounds = cfg.pick(9, 2)
    samples = cfg.pick(300, 20)
    rb_cases, _ = bench.redisbreaker_cases(cfg.url)
    il_cases, il_breakers = interlock_cases(cfg.url)
    py_redis = bench.pybreaker_redis_cases(cfg.url)
    get = bench.get_case(cfg.url)
    for case in [*py_redis, rb_cases[1], get]:
        case.calls = redis_calls
    cases = [
        *bench.bare_cases(),
        *bench.pybreaker_memory_cases(),
        *seed_cases(),
        *py_redis,
        *il_cases,
        *rb_cases,
        get,
    ]
    stats = measure(cases, calls=calls, rounds=rounds, samples=samples)
    info = redis.Redis.from_url(cfg.url)
    # interlock's background poller (one HGETALL a second per breaker) would add to
    # whichever case is being counted: count it first, then stop it.
    ordered = sorted(cases, key=lambda c: not c.name.startswith("interlock"))
    for case in ordered:
        n = counted_calls if case.calls else calls
        count_round_trips(case, stats[case.name], n, info, rounds)
        if case is il_cases[-1]:
            for cb in il_breakers:
                cb.close()
    info.close()

    s = stats.get
    result = SuiteResult(
        suite="call_overhead",
        title="Call overhead, closed state (µs per call; round trips per call)",
        columns=["library", "success µs", "success p99", "failure µs", "failure p99",
                 "x pybreaker-mem (success)", "x pybreaker+Redis (failure)",
                 "rt/success", "rt/failure", "cmds/failure", "Redis µs/failure"],
    )  # fmt: skip
    pm = s("pybreaker in memory / success")
    pr = s("pybreaker + Redis / failure")
    for lib in LIBRARIES:
        ok, bad = s(f"{lib} / success"), s(f"{lib} / failure")
        if ok is None or bad is None or not ok.available:
            note = ok.note if ok else "not measured"
            result.rows.append([lib, f"not available: {note}", *[""] * 9])
            continue
        result.rows.append([
            lib, fmt(ok.median_us), fmt(ok.p99_us), fmt(bad.median_us), fmt(bad.p99_us),
            fmt(ratio(ok, pm)), fmt(ratio(bad, pr)),
            fmt(ok.round_trips_per_call, 4), fmt(bad.round_trips_per_call, 4),
            fmt(bad.commands_per_call, 2), fmt(bad.server_us_per_call, 1),
        ])  # fmt: skip
    g = s(get.name)
    g_us, g_p99 = (g.median_us, g.p99_us) if g else (None, None)
    result.rows.append([get.name, fmt(g_us), fmt(g_p99), "", "", "", "", "1.0000", "", "", ""])
    rb_ok, rb_bad = s("redisbreaker / success"), s("redisbreaker / failure")
    result.targets = [
        check("success vs pybreaker in memory", "<= 1.0", ratio(rb_ok, pm), lambda v: v <= 1.0),
        check("success vs pybreaker + Redis", "<= 0.02 (>= 50x cheaper)",
              ratio(rb_ok, s("pybreaker + Redis / success")), lambda v: v <= 0.02),
        check("round trips per success (amortized)", "<= 0.01",
              rb_ok.round_trips_per_call if rb_ok else None, lambda v: v <= 0.01),
        check("round trips per failure", "== 1",
              rb_bad.round_trips_per_call if rb_bad else None, lambda v: abs(v - 1) < 0.005),
        check("failure vs pybreaker + Redis", "<= 0.5", ratio(rb_bad, pr), lambda v: v <= 0.5),
        check("Redis time per recorded failure (µs)", "<= 10",
              rb_bad.server_us_per_call if rb_bad else None, lambda v: v <= 10),
    ]  # fmt: skip
    result.notes = [
        "µs: median over interleaved rounds; p99 over calls timed one by one.",
        "rt: requests sent by the library's own client (a pipeline counts once); "
        "cmds: INFO commandstats delta, including commands run inside Lua scripts; "
        "Redis µs: the server's own time per call (a script's, commands inside included; "
        f"the median of {rounds} counting rounds of {counted_calls} calls each).",
        "interlock-cb coordinates only transitions through Redis; closed-state outcomes "
        "stay in its process (0 round trips), so its fleet-wide counts are not shared.",
        f"interlock-cb pinned at {INTERLOCK_VERSION}.",
    ]
    result.data = {
        "cases": {name: st.as_dict() for name, st in stats.items()},
        "config": {
            "calls": calls,
            "redis_calls": redis_calls,
            "rounds": rounds,
            "counted_calls": counted_calls,
        },
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    labels = [lib for lib in LIBRARIES if (st := s(f"{lib} / success")) and st.available]
    result.chart = {
        "labels": labels,
        "series": {
            "success": [stats[f"{lib} / success"].median_us for lib in labels],
            "failure": [stats[f"{lib} / failure"].median_us for lib in labels],
        },
        "ylabel": "µs per call (log)",
        "log": True,
    }
    return result
