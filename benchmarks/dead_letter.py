"""Dead letters: what writing one costs (client µs, and Redis µs from INFO commandstats),
and what recording one attempt costs. A task that succeeds at its first try pays
nothing: neither is written.

Run alone: ``python -m benchmarks.dead_letter [--url URL] [--tiny]``.
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from typing import Any

import msgpack
from celery import Celery

from benchmarks.harness import Config, SuiteResult, fmt, run_alone
from redisbreaker import scripts
from redisbreaker.celery.deadletter import DeadLetters
from redisbreaker.config import client_from_url

TRACEBACK = "Traceback (most recent call last):\n" + '  File "x.py", line 1, in f\n' * 40


def _fields(task_id: str) -> dict[str, object]:
    return {
        "id": task_id, "task": "jobs.render", "queue": "render", "reason": "failed",
        "worker": "celery@gpu1", "exc_type": "RuntimeError", "exc_message": "CUDA error",
        "traceback": TRACEBACK, "exchange": "", "routing_key": "render",
        "body": json.dumps([[42], {"size": "xl"}, {}]).encode(),
        "headers": msgpack.packb({"task": "jobs.render", "id": task_id, "retries": 3}),
        "properties": msgpack.packb({"correlation_id": task_id, "delivery_mode": 2}),
        "content_type": "application/json", "content_encoding": "utf-8",
        "attempts": msgpack.packb([]),
    }  # fmt: skip


def _redis_usec(client: Any, command: str) -> tuple[float, int]:
    """(µs, calls) of ``command`` since the server started (it includes the commands
    its scripts ran)."""
    stats: dict[str, Any] = client.info("commandstats")
    entry = stats.get(f"cmdstat_{command}") or {"usec": 0, "calls": 0}
    return float(entry["usec"]), int(entry["calls"])


def run(cfg: Config) -> SuiteResult:
    n = cfg.pick(2_000, 50)
    prefix = f"rbbench{uuid.uuid4().hex[:6]}:"
    app = Celery("dlq_bench", broker="memory://")
    app.conf.update(redisbreaker_url=cfg.url, redisbreaker_prefix=prefix,
                    redisbreaker_dead_letter_maxlen=10_000)  # fmt: skip
    store = DeadLetters(app)
    client = client_from_url(cfg.url)
    store.add("render", _fields("warm-up"))  # loads the script
    u0, c0 = _redis_usec(client, "evalsha")
    times = []
    for i in range(n):
        start = time.perf_counter()
        store.add("render", _fields(f"t{i}"))
        times.append(time.perf_counter() - start)
    u1, c1 = _redis_usec(client, "evalsha")
    attempt = scripts.for_client(client, "attempt_add")
    blob = msgpack.packb(["celery@gpu1", 0.5, "retry", 1, "RuntimeError", "CUDA error", 5.0])
    a_times = []
    for i in range(n):
        start = time.perf_counter()
        attempt(keys=[f"{prefix}att{{t{i}}}:a"], args=["", 86_400_000, blob])
        a_times.append(time.perf_counter() - start)
    result = SuiteResult("dead_letter", "Dead letters: cost of one write (µs)",
                         ["operation", "client µs (median)", "p99", "Redis µs"])  # fmt: skip
    p99 = statistics.quantiles(times, n=100)[98] if len(times) >= 100 else max(times)
    result.rows.append(["dead letter (one EVALSHA, ~2.5 KB entry)",
                        fmt(statistics.median(times) * 1e6), fmt(p99 * 1e6),
                        fmt((u1 - u0) / max(1, c1 - c0))])  # fmt: skip
    result.rows.append(["attempt record (one EVALSHA)", fmt(statistics.median(a_times) * 1e6),
                        "", ""])  # fmt: skip
    result.notes = [f"{n} writes each; a task that never failed writes nothing."]
    result.data = {"dead_letter_us": statistics.median(times) * 1e6,
                   "attempt_us": statistics.median(a_times) * 1e6}  # fmt: skip
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])
    return result


def main() -> int:
    return run_alone("dead_letter", run)


if __name__ == "__main__":
    raise SystemExit(main())
