"""Window cost: Redis time per recorded failure as the rate window grows.

Each case drives the breaker scripts directly (a virtual clock in ARGV[1], like the
model agreement test) on a breaker that cannot trip (the only threshold is a slow-call
rate, and every recorded outcome is a fast failure), so each call is one
``breaker_report`` EVALSHA that pushes one outcome into the window. The Redis time of a
call is the ``INFO commandstats`` ``usec`` delta of ``evalsha`` (it includes the commands
the script runs) divided by the calls. Cases run interleaved, in a random order per
round; figures are medians over rounds.

* count windows start full (one admit flushes ``size`` pending successes), so every
  failure evicts a slot, as in steady state;
* time windows advance the clock 7 ms per call, so buckets are created and dropped;
* "first call after a long idle": a ``TimeWindow(86400)`` with a bucket in each of
  ``BUCKETS`` seconds, then one call 80,000 s later (inside the window: the buckets
  that fell out are dropped, the window is not simply cleared).

Run alone: ``python -m benchmarks.window_cost [--url URL] [--tiny]``.
"""

from __future__ import annotations

import random
import statistics
import uuid
from typing import Any

import redis

from benchmarks.harness import Config, SuiteResult, check, fmt, run_alone
from redisbreaker import scripts
from redisbreaker.keys import KeySpace
from redisbreaker.options import BreakerOptions, CountWindow, TimeWindow, Window

START_MS = 1_700_000_000_000
IDLE_MS = 80_000 * 1000
BUCKETS = 1000
STEP_MS = 7


class Driver:
    """One breaker, called through its scripts with a virtual clock."""

    def __init__(self, client: redis.Redis, window: Window) -> None:
        self.client = client
        self.options = BreakerOptions(
            fail_max=None, window=window, minimum_calls=1, slow_call_duration=60.0,
            slow_call_rate_threshold=1.0,
        )  # fmt: skip
        ks = KeySpace.of("rbbench:", "cb", f"w{uuid.uuid4().hex[:12]}")
        self.keys = [ks.key("s"), ks.key("p"), ks.key("b"), ks.key("r")]
        self.report_script = scripts.register(client, "breaker_report")
        self.admit_script = scripts.register(client, "breaker_admit")
        self.now = START_MS

    def argv(self) -> list[Any]:
        return self.options.argv(
            clock=str(self.now), rand=0.5, channel="rbbench:events", event_prefix=b"\x96\xa1n\xa1o"
        )

    def fill(self, successes: int) -> None:
        # One batch run: generation 0 (the breaker never trips), code '0', the count.
        self.admit_script(keys=self.keys, args=[*self.argv(), "t", 0, "0", successes, ""])

    def fail(self) -> None:
        self.report_script(keys=self.keys, args=[*self.argv(), 0, "1", 1, ""])

    def delete(self) -> None:
        self.client.delete(*self.keys)


def evalsha_usec(client: redis.Redis) -> tuple[float, int]:
    """(usec, calls) of EVALSHA since the server started."""
    stats: dict[str, Any] = client.info("commandstats")
    entry = stats.get("cmdstat_evalsha") or {"usec": 0, "calls": 0}
    return float(entry["usec"]), int(entry["calls"])


def timed(client: redis.Redis, calls: int, fn: Any) -> float:
    """Redis µs per EVALSHA over ``calls`` calls of ``fn``."""
    u0, c0 = evalsha_usec(client)
    for _ in range(calls):
        fn()
    u1, c1 = evalsha_usec(client)
    return (u1 - u0) / max(1, c1 - c0)


def steady_case(client: redis.Redis, window: Window, calls: int) -> float:
    d = Driver(client, window)
    try:
        if isinstance(window, CountWindow):
            d.fill(window.size)

        def step() -> None:
            d.now += STEP_MS
            d.fail()

        step()  # loads the script (NOSCRIPT) outside the timed calls
        return timed(client, calls, step)
    finally:
        d.delete()


def idle_case(client: redis.Redis, buckets: int) -> float:
    d = Driver(client, TimeWindow(86_400))
    try:
        for _ in range(buckets):
            d.now += 1000
            d.fail()
        d.now += IDLE_MS
        return timed(client, 1, d.fail)
    finally:
        d.delete()


CASES: list[tuple[str, Window | None]] = [
    ("CountWindow(100)", CountWindow(100)),
    ("CountWindow(100000)", CountWindow(100_000)),
    ("TimeWindow(60)", TimeWindow(60)),
    ("TimeWindow(86400)", TimeWindow(86_400)),
    ("TimeWindow(86400), first call after 80,000 s idle", None),
]


def run(cfg: Config) -> SuiteResult:
    client = redis.Redis.from_url(cfg.url)
    rounds = cfg.pick(7, 1)
    calls = cfg.pick(2000, 20)
    buckets = cfg.pick(BUCKETS, 20)
    samples: dict[str, list[float]] = {name: [] for name, _ in CASES}
    for _ in range(rounds):
        order = list(CASES)
        random.shuffle(order)
        for name, window in order:
            usec = (
                idle_case(client, buckets) if window is None else steady_case(client, window, calls)
            )
            samples[name].append(usec)
    med = {name: statistics.median(v) for name, v in samples.items()}
    big, small = med["CountWindow(100000)"], med["CountWindow(100)"]
    ratio = big / small if small else None
    result = SuiteResult(
        suite="window_cost",
        title="Window cost: Redis µs per recorded failure (INFO commandstats, evalsha)",
        columns=["case", "Redis µs per call (median)", "min", "max"],
    )
    for name, _ in CASES:
        v = samples[name]
        result.rows.append([name, fmt(med[name]), fmt(min(v)), fmt(max(v))])
    result.targets = [
        check("CountWindow(100000) / CountWindow(100), Redis µs per failure", "<= 3.0", ratio,
              lambda x: x <= 3.0),
    ]  # fmt: skip
    result.notes = [
        f"{rounds} rounds x {calls} calls per case; count windows start full; time windows "
        f"advance {STEP_MS} ms per call; the idle case has {buckets} one-second buckets "
        "before the jump.",
    ]
    result.data = {"median_usec": med, "samples_usec": samples, "ratio": ratio}
    result.chart = {
        "labels": [name for name, _ in CASES],
        "series": {"Redis µs per call": [med[name] for name, _ in CASES]},
        "ylabel": "µs",
        "log": True,
    }
    return result


def main() -> int:
    return run_alone("window_cost", run)


if __name__ == "__main__":
    raise SystemExit(main())
