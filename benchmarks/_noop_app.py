"""The Celery app of the gate suite's workers: one no-op task, gated or not.

Environment: ``BENCH_BROKER`` (Redis URL), ``BENCH_GATED`` ("0": no gate; "view": a
``can_consume`` patch checking the breaker's cached view, each task run through the
breaker; "celery": ``redisbreaker.celery.install(app)`` and ``@shared_breaker``),
``BENCH_BREAKER`` (the breaker's name), ``BENCH_QUEUE`` (the queue consumed),
``BENCH_WARMUP`` (tasks run before the clock starts).
The worker times its own batch: from the start of task number ``BENCH_WARMUP`` (so
what a worker does once, at start-up, is not timed: its first connections, the
gate's first polls) to the end of the task sent with ``final=True``, and stores the
seconds under ``<queue>:elapsed`` in Redis, so no per-task I/O is added.
"""

from __future__ import annotations

import os
import time
from types import MethodType
from typing import Any

import redis
from celery import Celery, bootsteps, signals

from redisbreaker import CircuitOpenError, SharedBreaker
from redisbreaker.breaker_core import monotonic

BROKER = os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/0")
MODE = os.environ.get("BENCH_GATED", "0")
GATED = MODE == "view"
WARMUP = int(os.environ.get("BENCH_WARMUP", "0"))

app = Celery("bench_noop", broker=BROKER)
app.conf.update(
    task_ignore_result=True, worker_hijack_root_logger=False, broker_connection_retry=True
)

breaker = SharedBreaker(
    os.environ.get("BENCH_BREAKER", "bench-gate"), client=redis.Redis.from_url(BROKER)
)
_clock: dict[str, float] = {}


def paused() -> bool:
    """The gate's per-fetch check: the breaker's cached view, no I/O while it is fresh."""
    try:
        breaker.core.fast_admit(monotonic())
    except CircuitOpenError:
        return True
    return False


class Gate(bootsteps.StartStopStep):
    """The per-host prior art's consumption gate, with the breaker's cached view as the check."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, parent: Any) -> None:
        qos = parent.task_consumer.channel.qos
        original = qos.can_consume

        def can_consume(self: Any) -> bool:
            return not paused() and bool(original())

        qos.can_consume = MethodType(can_consume, qos)


if GATED:
    app.steps["consumer"].add(Gate)


def _noop() -> None:
    return None


def noop(i: int, final: bool = False) -> None:
    if GATED:
        breaker.call(_noop)


if MODE == "celery":
    import redisbreaker.celery

    redisbreaker.celery.install(app)
    task = redisbreaker.celery.shared_breaker(
        os.environ.get("BENCH_BREAKER", "bench-gate"), scope="worker", pause="worker",
        fail_max=5, reset_timeout=60,
    )(app.task(name="bench.noop")(noop))  # fmt: skip
else:
    task = app.task(name="bench.noop")(noop)


@signals.worker_ready.connect
def _warm(**kw: Any) -> None:
    if GATED:
        breaker.sync()  # scripts loaded, view cached, pub/sub started before the clock


@signals.task_prerun.connect
def _start(task_id: str, task: Any, args: Any = (), **kw: Any) -> None:
    if args and args[0] == WARMUP:
        _clock["start"] = time.perf_counter()


@signals.task_postrun.connect
def _end(task_id: str, task: Any, args: Any = (), kwargs: Any = None, **kw: Any) -> None:
    if args and len(args) > 1 and args[1]:
        elapsed = time.perf_counter() - _clock.get("start", time.perf_counter())
        queue = os.environ.get("BENCH_QUEUE", "celery")
        redis.Redis.from_url(BROKER).set(f"{queue}:elapsed", repr(elapsed), ex=3600)
