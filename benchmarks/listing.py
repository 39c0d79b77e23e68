"""Operator listing: how long ``Fleet.breakers()`` (``redisbreaker ls``) takes for a
fleet of N breakers on one Redis (a SCAN, then one pipelined HMGET per state hash).

Run alone: ``python -m benchmarks.listing [--url URL] [--tiny]``.
"""

from __future__ import annotations

import statistics
import time
import uuid

from benchmarks.harness import Config, SuiteResult, check, fmt, run_alone
from redisbreaker import stored
from redisbreaker.config import client_from_url
from redisbreaker.fleet import Fleet
from redisbreaker.keys import KeySpace

SETTINGS = "5,0,0,10,0,0,30000,1,30000,0,1,60000,1,604800000"


def listing_seconds(url: str, breakers: int, rounds: int) -> list[float]:
    """Seconds per full listing of ``breakers`` breakers under a fresh prefix."""
    client = client_from_url(url)
    prefix = f"rbbench{uuid.uuid4().hex[:6]}:"
    pipe = client.pipeline(transaction=False)
    for i in range(breakers):
        key = KeySpace.of(prefix, "cb", f"svc-{i}").key("s")
        pipe.set(key, stored.encode({**stored.fresh(), "n_ok": 5, "cfg": SETTINGS}))
    pipe.execute()
    fleet = Fleet(client, prefix)
    try:
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            assert len(fleet.breakers()) == breakers
            times.append(time.perf_counter() - start)
        return times
    finally:
        keys = [KeySpace.of(prefix, "cb", f"svc-{i}").key("s") for i in range(breakers)]
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])


def run(cfg: Config) -> SuiteResult:
    sizes = cfg.pick([1_000, 10_000], [200])
    rounds = cfg.pick(5, 1)
    result = SuiteResult("listing", "Operator listing: `redisbreaker ls` of N breakers (s)",
                         ["breakers", "median s", "max s"])  # fmt: skip
    med: dict[int, float] = {}
    for n in sizes:
        times = listing_seconds(cfg.url, n, rounds)
        med[n] = statistics.median(times)
        result.rows.append([n, fmt(med[n], 3), fmt(max(times), 3)])
    biggest = max(sizes)
    result.targets = [
        check(f"listing {biggest} breakers", "<= 2.0 s" if biggest >= 10_000 else "measured",
              med[biggest], lambda x: x <= 2.0),
    ]  # fmt: skip
    result.notes = [f"{rounds} listings per size; one SCAN and one pipelined HMGET per key."]
    result.data = {"median_s": med}
    result.chart = {"labels": [str(n) for n in sizes], "series": {"s": list(med.values())},
                    "ylabel": "s"}  # fmt: skip
    return result


def main() -> int:
    return run_alone("listing", run)


if __name__ == "__main__":
    raise SystemExit(main())
