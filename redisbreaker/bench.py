"""Measuring the breaker's cost on your own Redis: the code behind ``redisbreaker bench``.

Everything here is also used by the comparison suite in ``benchmarks/`` (which is not
installed); nothing here imports from it.

How things are measured:

* **Interleaving.** Every case runs once per round, in a fresh random order, so a
  noisy neighbour slows all cases alike; the figures are medians over rounds.
* **µs per call.** In each round a case runs ``calls`` times in a tight loop; the
  per-call figure of that round is the loop's time divided by ``calls``. The median
  is over rounds. The loop and the op's own call cost (~0.05 µs) are included in
  every case alike, which is what the "bare call" case shows.
* **p99.** In each round a case also runs ``samples`` calls timed one by one with
  ``perf_counter_ns``; the timer's own median cost is subtracted. p99 is over all
  those samples of all rounds.
* **Round trips.** Two counts, after the timed rounds, one case at a time:
  ``commands`` is the ``INFO commandstats`` delta: every command except ``info``
  itself, including those a Lua script runs inside (Redis counts them too) and each
  command of a ``MULTI``/``EXEC`` block; ``scripts`` is the ``EVALSHA``/``EVAL``/
  ``FCALL`` part of it (one round trip each, whatever they run inside);
  ``round_trips`` is the number of requests the case's own client sent (a pipeline
  is 1), counted by a wrapper on its connection class. For a script-only library
  ``round_trips == scripts``; for a plain-command one ``round_trips == commands``
  less the commands sent together in pipelines.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import multiprocessing
import platform
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

import redis

from redisbreaker.breaker import SharedBreaker
from redisbreaker.breaker_core import monotonic

Op = Callable[[], object]

# The targets the library is built to (see the benchmarks README); never loosened.
TARGET_SUCCESS_VS_PYBREAKER_MEMORY = 1.0
TARGET_SUCCESS_ROUND_TRIPS = 0.01
TARGET_FAILURE_ROUND_TRIPS = 1.0
TARGET_FAILURE_VS_PYBREAKER_REDIS = 0.5
TARGET_GATE_VS_VALUE = 1.0


class Boom(Exception):
    """The failure every failing case raises."""


def succeed() -> int:
    return 1


def fail() -> int:
    raise Boom("benchmark failure")


# -- round trip counting ---------------------------------------------------------------


@dataclass
class SendCounter:
    """How many requests one client has sent (a pipeline counts once)."""

    sends: int = 0


def counting_client(url: str, **options: Any) -> tuple[redis.Redis, SendCounter]:
    """A redis-py client for ``url`` whose connections count the requests they send."""
    client = redis.Redis.from_url(url, **options)
    counter = SendCounter()
    pool = client.connection_pool
    base: type[Any] = pool.connection_class

    def send_packed_command(self: Any, command: Any, check_health: bool = True) -> None:
        counter.sends += 1
        base.send_packed_command(self, command, check_health)

    pool.connection_class = type(f"Counting{base.__name__}", (base,), {
        "send_packed_command": send_packed_command,
    })  # fmt: skip
    return client, counter


def commandstats(client: redis.Redis, what: str = "calls") -> dict[str, int]:
    """Calls (or ``usec``: microseconds spent) per command since the server started
    (``INFO commandstats``)."""
    raw: dict[str, Any] = client.info("commandstats")
    out: dict[str, int] = {}
    for key, value in raw.items():
        name = key.removeprefix("cmdstat_")
        out[name] = int(value[what]) if isinstance(value, dict) else 0
    return out


def server_usec(calls: dict[str, int], usec: dict[str, int]) -> int:
    """Redis's time for what was sent: a script's time includes the commands it ran
    (which commandstats also counts on their own), so when scripts ran, only theirs."""
    scripts = [k for k in SCRIPT_COMMANDS if calls.get(k)]
    if scripts:
        return sum(usec.get(k, 0) for k in scripts)
    return sum(v for k, v in usec.items() if k != "info")


# Commands that run a script: one round trip each, whatever the script calls inside.
SCRIPT_COMMANDS = ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro")


def commands_between(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Per-command deltas, leaving out ``info`` (the measuring itself)."""
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return {k: v for k, v in delta.items() if v and k != "info"}


# -- environment -----------------------------------------------------------------------


def versions(*names: str) -> dict[str, str]:
    """Python, platform and the installed version of each distribution named."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("redisbreaker", "redis", "hiredis", *names):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def server_info(client: redis.Redis) -> dict[str, Any]:
    """``INFO server`` of the Redis measured against."""
    info: dict[str, Any] = client.info("server")
    return {k: v for k, v in info.items() if not isinstance(v, dict)}


def machine() -> dict[str, Any]:
    return {
        "cpus": multiprocessing.cpu_count(),
        "machine": platform.machine(),
        "node": platform.node(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


# -- timing ------------------------------------------------------------------------------


@dataclass
class Case:
    """One thing to time: ``op`` does one call; ``client``/``counter`` if it talks to Redis."""

    name: str
    op: Op
    client: redis.Redis | None = None
    counter: SendCounter | None = None
    available: bool = True
    note: str = ""
    calls: int | None = None  # calls per round, if not the run's default (Redis-bound cases)


@dataclass
class Stats:
    """The figures of one case."""

    name: str
    available: bool = True
    median_us: float | None = None
    p99_us: float | None = None
    rounds_us: list[float] = field(default_factory=list)
    commands_per_call: float | None = None
    scripts_per_call: float | None = None
    round_trips_per_call: float | None = None
    server_us_per_call: float | None = None  # Redis's own time (INFO commandstats usec)
    commands: dict[str, int] = field(default_factory=dict)
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def unavailable(name: str, why: str) -> Case:
    def nothing() -> None:
        raise RuntimeError(why)

    return Case(name, nothing, available=False, note=why)


def _loop(op: Op, n: int) -> float:
    repeat = itertools.repeat
    perf = time.perf_counter
    start = perf()
    for _ in repeat(None, n):
        op()
    return perf() - start


def _timer_overhead_ns() -> int:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(2000):
        t = clock()
        samples.append(clock() - t)
    return int(statistics.median(samples))


def _singles(op: Op, n: int, overhead: int) -> list[float]:
    clock = time.perf_counter_ns
    out: list[float] = []
    append = out.append
    for _ in range(n):
        t = clock()
        op()
        append(max(0, clock() - t - overhead) / 1000.0)
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100.0 * (len(ordered) - 1))))
    return ordered[rank]


def measure(
    cases: Sequence[Case],
    *,
    calls: int,
    rounds: int,
    samples: int = 200,
    warmup: int = 50,
    seed: int | None = None,
) -> dict[str, Stats]:
    """Time every available case, interleaved (see the module doc).

    ``calls`` is per case per round, unless the case sets its own (cases that talk to
    Redis on every call are given fewer, to keep rounds about equally long).
    """
    rng = random.Random(seed)
    live = [c for c in cases if c.available]
    stats = {c.name: Stats(c.name, c.available, note=c.note) for c in cases}
    singles: dict[str, list[float]] = {c.name: [] for c in live}
    for case in live:
        _loop(case.op, warmup)
    overhead = _timer_overhead_ns()
    for _ in range(rounds):
        order = list(live)
        rng.shuffle(order)
        for case in order:
            n = case.calls or calls
            stats[case.name].rounds_us.append(_loop(case.op, n) / n * 1e6)
            singles[case.name].extend(_singles(case.op, min(samples, n), overhead))
    for case in live:
        s = stats[case.name]
        s.median_us = statistics.median(s.rounds_us)
        s.p99_us = percentile(singles[case.name], 99)
    return stats


def count_round_trips(
    case: Case, stats: Stats, calls: int, info: redis.Redis, rounds: int = 1
) -> None:
    """Run ``case`` ``calls`` times alone, ``rounds`` times; store commands and round
    trips per call, and Redis's time per call (the median round's: a server sharing
    the machine's CPUs gets preempted in some rounds)."""
    if not case.available or case.client is None:
        return
    sent = case.counter.sends if case.counter else 0
    delta: dict[str, int] = {}
    server = []
    for _ in range(rounds):
        before, usec_before = commandstats(info), commandstats(info, "usec")
        for _ in range(calls):
            case.op()
        after, usec_after = commandstats(info), commandstats(info, "usec")
        step = commands_between(before, after)
        server.append(server_usec(step, commands_between(usec_before, usec_after)) / calls)
        for k, v in step.items():
            delta[k] = delta.get(k, 0) + v
    calls *= rounds
    stats.server_us_per_call = statistics.median(server)
    stats.commands = delta
    stats.commands_per_call = sum(delta.values()) / calls
    stats.scripts_per_call = sum(delta.get(k, 0) for k in SCRIPT_COMMANDS) / calls
    if case.counter is not None:
        stats.round_trips_per_call = (case.counter.sends - sent) / calls


# -- the cases shared by `redisbreaker bench` and benchmarks/ ----------------------------


def bench_name() -> str:
    return f"bench-{uuid.uuid4().hex[:10]}"


class ValueGate:
    """The per-host prior art's gate: a ``multiprocessing.Value`` holding "paused
    until" (epoch s), checked before each fetch."""

    def __init__(self) -> None:
        self.paused_until = multiprocessing.Value(ctypes.c_double, 0.0)

    def check(self, now: float) -> bool:
        """True while paused: ``_paused_until.value > 0 and now < _paused_until.value``."""
        return self.paused_until.value > 0 and now < self.paused_until.value


def bare_cases() -> list[Case]:
    def bare_success() -> None:
        succeed()

    def bare_failure() -> None:
        try:
            fail()
        except Boom:
            pass

    return [Case("bare call / success", bare_success), Case("bare call / failure", bare_failure)]


def gate_cases(breaker: SharedBreaker) -> list[Case]:
    """The per-check cost of a per-host ``Value`` gate and of the breaker's cached view."""
    gate = ValueGate()
    check = gate.check
    wall = time.time
    core = breaker.core
    fast_admit = core.fast_admit

    def value_check() -> None:
        check(wall())

    def redisbreaker_check() -> None:
        fast_admit(monotonic())

    breaker.sync()  # a fresh view, so the check is decided locally
    return [
        Case("gate: per-host multiprocessing.Value check", value_check),
        Case("gate: redisbreaker fast_admit(monotonic())", redisbreaker_check),
    ]


def pybreaker_memory_cases() -> list[Case]:
    try:
        import pybreaker
    except ImportError:
        why = "pybreaker not installed"
        return [unavailable(f"pybreaker in memory / {k}", why) for k in ("success", "failure")]
    cb = pybreaker.CircuitBreaker(fail_max=10**9, reset_timeout=60)
    return call_cases("pybreaker in memory", cb.call, Boom)


def pybreaker_redis_cases(url: str) -> list[Case]:
    try:
        import pybreaker
    except ImportError:
        why = "pybreaker not installed"
        return [unavailable(f"pybreaker + Redis / {k}", why) for k in ("success", "failure")]
    out: list[Case] = []
    for kind in ("success", "failure"):
        client, counter = counting_client(url)
        storage = pybreaker.CircuitRedisStorage(
            pybreaker.STATE_CLOSED, client, namespace=bench_name()
        )
        cb = pybreaker.CircuitBreaker(fail_max=10**9, reset_timeout=60, state_storage=storage)
        case = call_cases("pybreaker + Redis", cb.call, Boom)[kind == "failure"]
        case.client, case.counter = client, counter
        out.append(case)
    return out


def redisbreaker_cases(url: str) -> tuple[list[Case], SharedBreaker]:
    """Success and failure through a closed SharedBreaker that never trips."""
    out: list[Case] = []
    breakers: list[SharedBreaker] = []
    for kind in ("success", "failure"):
        client, counter = counting_client(url)
        breaker = SharedBreaker(bench_name(), client=client, fail_max=2**31)
        breaker.sync()
        breakers.append(breaker)
        case = call_cases("redisbreaker", breaker.call, Boom)[kind == "failure"]
        case.client, case.counter = client, counter
        out.append(case)
    return out, breakers[0]


def call_cases(label: str, call: Callable[..., Any], error: type[BaseException]) -> list[Case]:
    def success() -> None:
        call(succeed)

    def failure() -> None:
        try:
            call(fail)
        except error:
            pass

    return [Case(f"{label} / success", success), Case(f"{label} / failure", failure)]


def get_case(url: str) -> Case:
    client, counter = counting_client(url)
    key = bench_name()
    client.set(key, b"x", ex=3600)

    def get() -> None:
        client.get(key)

    return Case("redis-py GET (one round trip)", get, client=client, counter=counter)


# -- `redisbreaker bench` ------------------------------------------------------------------


@dataclass
class Target:
    """One target beside its measured value."""

    name: str
    target: str
    measured: float | None
    met: bool | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ratio(a: Stats | None, b: Stats | None) -> float | None:
    if a is None or b is None or a.median_us is None or b.median_us is None:
        return None
    return a.median_us / b.median_us if b.median_us > 0 else None


def _check(name: str, target: str, value: float | None, ok: Callable[[float], bool]) -> Target:
    return Target(name, target, value, None if value is None else ok(value))


def call_targets(stats: dict[str, Stats]) -> list[Target]:
    """The call and gate targets, from stats keyed by the shared case names."""
    s = stats.get
    rb_ok, rb_fail = s("redisbreaker / success"), s("redisbreaker / failure")
    return [
        _check("closed-state success vs pybreaker in memory", "<= 1.0",
               ratio(rb_ok, s("pybreaker in memory / success")),
               lambda v: v <= TARGET_SUCCESS_VS_PYBREAKER_MEMORY),
        _check("closed-state success vs pybreaker + Redis", "<= 0.02 (50x cheaper)",
               ratio(rb_ok, s("pybreaker + Redis / success")), lambda v: v <= 0.02),
        _check("round trips per closed-state success", "<= 0.01",
               rb_ok.round_trips_per_call if rb_ok else None,
               lambda v: v <= TARGET_SUCCESS_ROUND_TRIPS),
        _check("round trips per failure", "== 1",
               rb_fail.round_trips_per_call if rb_fail else None,
               lambda v: abs(v - TARGET_FAILURE_ROUND_TRIPS) < 0.005),
        _check("failure vs pybreaker + Redis", "<= 0.5",
               ratio(rb_fail, s("pybreaker + Redis / failure")),
               lambda v: v <= TARGET_FAILURE_VS_PYBREAKER_REDIS),
        _check("gate check vs per-host multiprocessing.Value", "<= 1.0",
               ratio(s("gate: redisbreaker fast_admit(monotonic())"),
                      s("gate: per-host multiprocessing.Value check")),
               lambda v: v <= TARGET_GATE_VS_VALUE),
    ]  # fmt: skip


@contextmanager
def redis_for(url: str | None) -> Iterator[str]:
    """``url``, or a private redis-server started for the duration."""
    with ExitStack() as stack:
        if url:
            yield url
            return
        from redisbreaker.testing.servers import RedisServer

        server = stack.enter_context(RedisServer())
        yield server.url


def run(
    url: str,
    *,
    calls: int = 20_000,
    rounds: int = 7,
    redis_calls: int = 300,
    samples: int = 200,
) -> dict[str, Any]:
    """Measure the call and gate overhead against ``url``; a JSON-ready result."""
    info = redis.Redis.from_url(url)
    rb_cases, rb = redisbreaker_cases(url)
    remote = [rb_cases[1], get_case(url), *pybreaker_redis_cases(url)]
    for case in remote:
        case.calls = redis_calls
    cases = [*bare_cases(), *pybreaker_memory_cases(), *gate_cases(rb), rb_cases[0], *remote]
    stats = measure(cases, calls=calls, rounds=rounds, samples=samples)
    for case in cases:
        count_round_trips(case, stats[case.name], case.calls or calls, info)
    base = stats["bare call / success"].median_us
    result: dict[str, Any] = {
        "versions": versions("pybreaker"),
        "machine": machine(),
        "redis": server_info(info),
        "config": {"calls": calls, "rounds": rounds, "redis_calls": redis_calls},
        "cases": {name: st.as_dict() for name, st in stats.items()},
        "ratios_vs_bare": {
            name: (st.median_us / base if st.median_us is not None and base else None)
            for name, st in stats.items()
        },
        "targets": [t.as_dict() for t in call_targets(stats)],
    }
    info.close()
    return result


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:.{digits}f}"


def format_table(result: dict[str, Any]) -> str:
    """The human-readable table ``redisbreaker bench`` prints."""
    lines = []
    v, r = result["versions"], result["redis"]
    lines.append(
        f"redisbreaker {v.get('redisbreaker')} | redis-py {v.get('redis')} | "
        f"Redis {r.get('redis_version', '?')} | Python {v['python']} | "
        f"{result['machine']['cpus']} CPUs | {result['machine']['date']}"
    )
    head = (
        f"{'case':<46} {'median µs':>10} {'p99 µs':>10} {'x bare':>9} "
        f"{'cmds/call':>10} {'lua/call':>9} {'rt/call':>9}"
    )
    lines += [head, "-" * len(head)]
    ratios = result["ratios_vs_bare"]
    for name, st in result["cases"].items():
        if not st["available"]:
            lines.append(f"{name:<46} {'not available: ' + st['note']}")
            continue
        lines.append(
            f"{name:<46} {_fmt(st['median_us']):>10} {_fmt(st['p99_us']):>10} "
            f"{_fmt(ratios.get(name), 1):>9} {_fmt(st['commands_per_call'], 4):>10} "
            f"{_fmt(st['scripts_per_call'], 4):>9} {_fmt(st['round_trips_per_call'], 4):>9}"
        )
    lines += ["", f"{'target':<46} {'wanted':>22} {'measured':>10}  result"]
    for t in result["targets"]:
        verdict = "n/a" if t["met"] is None else "met" if t["met"] else "MISSED"
        lines.append(f"{t['name']:<46} {t['target']:>22} {_fmt(t['measured'], 4):>10}  {verdict}")
    return "\n".join(lines)


def dump_json(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2, sort_keys=False, default=str)


def quiet_events() -> None:
    """Silence the pub/sub thread's reconnect warning when a private server stops."""
    import logging

    logging.getLogger("redisbreaker").setLevel(logging.ERROR)


def main_bench(url: str | None, *, as_json: bool, tiny: bool, calls: int | None) -> int:
    """``redisbreaker bench``: measure, print, return the exit status."""
    n = calls if calls is not None else (2_000 if tiny else 20_000)
    with redis_for(url) as target:
        if tiny:
            result = run(target, calls=n, rounds=2, redis_calls=20, samples=20)
        else:
            result = run(target, calls=n)
        quiet_events()
    out = dump_json(result) if as_json else format_table(result)
    sys.stdout.write(out + "\n")
    return 0
