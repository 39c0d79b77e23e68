"""Suite 2: what a worker pays for being gated.

* The per-check cost of the gate's local view (``fast_admit`` on the breaker's cached
  view) against the per-host ``multiprocessing.Value`` check, interleaved.
* A no-op task's throughput on a real Celery worker (solo pool, Redis broker) with
  and without the gate installed: the gate patches ``can_consume`` like the per-host prior art and
  runs each task through the breaker. Workers alternate, each batch pre-queued;
  the worker times its own batch (first task start to last task end).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from benchmarks.harness import Case, Config, SuiteResult, check, fmt, measure, unavailable
from redisbreaker import bench

ROOT = Path(__file__).resolve().parent.parent


def celery_gate_case() -> Case:
    """The Celery gate's own per-check function, if the integration provides one.

    The integration is asked for ``redisbreaker.celery.gate.benchmark_check()``: a
    zero-argument callable doing exactly what the gate does per fetch.
    """
    name = "gate: redisbreaker.celery gate check"
    try:
        from redisbreaker.celery import gate as celery_gate
    except ImportError:
        return unavailable(name, "redisbreaker.celery.gate not present")
    factory = getattr(celery_gate, "benchmark_check", None)
    if factory is None:
        return unavailable(name, "redisbreaker.celery.gate.benchmark_check() not provided")
    return Case(name, factory())


def per_check(cfg: Config) -> tuple[dict[str, bench.Stats], list[Case]]:
    _, rb = bench.redisbreaker_cases(cfg.url)
    cases = [*bench.gate_cases(rb), celery_gate_case()]
    core = rb.core
    view_expires = core.view_expires

    def inline_view() -> None:  # the least a cached-view check can do (not an API)
        now = time.monotonic()
        if now < view_expires and core.allow_ticket is not None:
            return

    cases.append(Case("gate: inline cached-view test (lower bound)", inline_view))
    stats = measure(cases, calls=cfg.pick(200_000, 2_000), rounds=cfg.pick(9, 2),
                    samples=cfg.pick(300, 20))  # fmt: skip
    return stats, cases


def _worker(url: str, queue: str, mode: str, warmup: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(BENCH_BROKER=url, BENCH_GATED=mode, BENCH_QUEUE=queue,
               BENCH_BREAKER=f"gate-{queue}", BENCH_WARMUP=str(warmup),
               PYTHONPATH=str(ROOT))  # fmt: skip
    cmd = [sys.executable, "-m", "celery", "-A", "benchmarks._noop_app", "worker",
           "--pool=solo", "-Q", queue, "-n", f"{queue}@%h", "--without-gossip",
           "--without-mingle", "--without-heartbeat", "-l", "warning"]  # fmt: skip
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip


def _batch(url: str, mode: str, tasks: int, timeout: float) -> float:
    """Queue ``tasks`` no-ops, start a worker, return tasks per second it reported:
    the last nine tenths of the batch, once the worker's start-up work is done."""
    from celery import Celery

    queue = f"bench-gate-{uuid.uuid4().hex[:8]}"
    app = Celery("bench_sender", broker=url)
    app.conf.task_ignore_result = True
    r = redis.Redis.from_url(url)
    with app.producer_or_acquire() as producer:
        for i in range(tasks):
            app.send_task("bench.noop", args=[i, i == tasks - 1], queue=queue,
                          producer=producer)  # fmt: skip
    warmup = tasks // 10
    proc = _worker(url, queue, mode, warmup)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            raw = r.get(f"{queue}:elapsed")
            if raw is not None:
                return (tasks - warmup) / float(raw)
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}")
            time.sleep(0.05)
        raise TimeoutError(f"batch of {tasks} not done in {timeout}s")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        r.delete(queue, f"{queue}:elapsed")
        r.close()


def throughput(cfg: Config) -> dict[str, Any]:
    try:
        import celery  # noqa: F401
    except ImportError:
        return {"available": False, "note": "celery not installed"}
    modes = ["0", "view"]
    try:
        import redisbreaker.celery  # noqa: F401

        modes.append("celery")
    except ImportError:
        pass
    tasks, rounds = cfg.pick(3000, 30), cfg.pick(7, 1)
    runs: dict[str, list[float]] = {m: [] for m in modes}
    for i in range(rounds):
        order = modes[i % len(modes) :] + modes[: i % len(modes)]
        for mode in order:
            runs[mode].append(_batch(cfg.url, mode, tasks, timeout=cfg.pick(120, 60)))
    medians = {m: statistics.median(v) for m, v in runs.items()}
    gated = "celery" if "celery" in modes else "view"
    ratios = [g / u for g, u in zip(runs[gated], runs["0"], strict=True)]
    return {
        "available": True,
        "tasks_per_batch": tasks,
        "rounds": rounds,
        "tasks_per_second": runs,
        "medians": medians,
        "gated_mode": gated,
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
        "view_ratio_median": statistics.median(
            [g / u for g, u in zip(runs["view"], runs["0"], strict=True)]
        ),
    }


def run(cfg: Config) -> SuiteResult:
    stats, cases = per_check(cfg)
    tp = throughput(cfg)
    result = SuiteResult(
        suite="gate",
        title="Gate overhead: per-check cost and a gated worker's no-op throughput",
        columns=["measure", "median", "p99", "x Value check"],
    )
    seed = stats["gate: per-host multiprocessing.Value check"]
    for case in cases:
        st = stats[case.name]
        if not st.available:
            result.rows.append([case.name, f"not available: {st.note}", "", ""])
            continue
        result.rows.append([f"{case.name} (µs)", fmt(st.median_us, 3), fmt(st.p99_us, 3),
                            fmt(bench.ratio(st, seed))])  # fmt: skip
    if tp.get("available"):
        labels = {"0": "ungated worker", "view": "can_consume cached-view gate + breaker.call",
                  "celery": "redisbreaker.celery install() + @shared_breaker"}  # fmt: skip
        for mode, rate in tp["medians"].items():
            result.rows.append([f"no-op tasks/s, {labels[mode]}", fmt(rate, 0), "", ""])
        result.rows.append(["throughput ratio, cached-view gate / ungated",
                            fmt(tp["view_ratio_median"], 3), "", ""])  # fmt: skip
        if tp["gated_mode"] == "celery":
            result.rows.append(["throughput ratio, redisbreaker.celery / ungated",
                                fmt(tp["ratio_median"], 3), "", ""])  # fmt: skip
    else:
        result.rows.append(["worker throughput", f"not available: {tp.get('note')}", "", ""])
    rb = stats["gate: redisbreaker fast_admit(monotonic())"]
    result.targets = [
        check("gate check vs per-host multiprocessing.Value check", "<= 1.0",
              bench.ratio(rb, seed), lambda v: v <= 1.0),
        check(f"gated ({tp.get('gated_mode')}) / ungated no-op throughput", ">= 0.97",
              tp.get("ratio_median"), lambda v: v >= 0.97),
    ]  # fmt: skip
    result.notes = [
        "The per-host check is `_paused_until.value > 0 and now < _paused_until.value` on a "
        "multiprocessing.Value(c_double) (it takes the Value's lock), now = time.time().",
        "The inline test reads the cached view's fields directly; it is the floor any "
        "cached-view check can reach, not an API.",
        "Throughput: solo pool, Redis broker on the same machine, batches pre-queued, "
        f"modes interleaved, {tp.get('rounds')} rounds; the worker times its batch itself, "
        "once a tenth of the batch has run (its start-up work is not timed). Gated modes: "
        "a per-host-style can_consume patch checking the cached view (+ breaker.call per "
        "task), and the real integration (redisbreaker.celery.install + @shared_breaker, "
        "scope=worker).",
    ]
    result.data = {"per_check": {k: v.as_dict() for k, v in stats.items()}, "throughput": tp}
    live = [c.name for c in cases if stats[c.name].available]
    result.chart = {
        "labels": [n.removeprefix("gate: ") for n in live],
        "series": {"µs per check": [stats[n].median_us for n in live]},
        "ylabel": "µs per check",
        "log": False,
    }
    return result
