"""Failure amplification, scaled down: one broken worker among healthy ones.

Healthy workers take ``work`` seconds a task; the broken one fails each at once and
grabs the next, so without a breaker it takes (and fails) most of the queue. With
``shared_breaker(scope="worker", pause="worker", retry_on_failure=True)`` it stops
fetching after ``fail_max`` failures, tries one task per open period, and every task
it failed is re-sent and succeeds on a healthy worker.

``run(url)`` prints both runs side by side; ``measure(url, with_breaker)`` returns the
numbers (the benchmarks reuse it). Workers are real ``celery worker`` processes on the
Redis at ``url``; each run uses its own queue and key namespace.

The worker side of this module is the app ``benchmarks.broken_worker:app``,
configured from ``RB_DEMO_*`` environment variables set by :func:`measure`.
"""

from __future__ import annotations

import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

from redisbreaker import stored

BROKEN = "broken"
HEALTHY = "healthy"
TASK = "demo.work"


# -- the worker side ---------------------------------------------------------------------


def _make_app() -> Any:
    from celery import Celery, signals

    import redisbreaker.celery

    url = os.environ["CELERY_BROKER_URL"]
    ns = os.environ["RB_DEMO_NS"]
    role = os.environ.get("RB_DEMO_ROLE", HEALTHY)
    work = float(os.environ.get("RB_DEMO_WORK", "0.5"))
    app = Celery("demo_amplification", broker=url)
    app.conf.update(
        task_default_queue=ns,
        worker_prefetch_multiplier=1,
        task_acks_late=True,
        redisbreaker_prefix=f"{ns}:",
    )
    clients: dict[int, redis.Redis] = {}

    def counters() -> redis.Redis:
        pid = os.getpid()
        if pid not in clients:
            clients.clear()
            clients[pid] = redis.Redis.from_url(url)
        return clients[pid]

    def body(i: int) -> int:
        from celery import current_task

        node = str(current_task.request.hostname)
        counters().hincrby(f"{ns}:ran", node, 1)
        if role == BROKEN:
            counters().hincrby(f"{ns}:failed", node, 1)
            raise RuntimeError("CUDA error: no device (the GPU is gone)")
        time.sleep(work)
        counters().sadd(f"{ns}:done", i)
        return i

    if os.environ.get("RB_DEMO_BREAKER") == "1":
        redisbreaker.celery.install(app)
        task = redisbreaker.celery.shared_breaker(
            scope="worker",
            pause="worker",
            fail_max=int(os.environ.get("RB_DEMO_FAIL_MAX", "2")),
            reset_timeout=float(os.environ.get("RB_DEMO_RESET", "2")),
            retry_on_failure=True,
        )(app.task(name=TASK, max_retries=None)(body))
    elif os.environ.get("RB_DEMO_BREAKER") == "seed":
        task = _seed_001(app, body, int(os.environ.get("RB_DEMO_FAIL_MAX", "2")),
                         float(os.environ.get("RB_DEMO_RESET", "2")))  # fmt: skip
    else:
        task = app.task(name=TASK)(body)
    del task

    @signals.task_received.connect(weak=False)
    def on_received(sender: Any = None, request: Any = None, **_: Any) -> None:
        counters().hincrby(f"{ns}:taken", str(sender.hostname), 1)

    @signals.task_failure.connect(weak=False)
    def on_failure(sender: Any = None, args: Any = None, **_: Any) -> None:
        if args:
            counters().sadd(f"{ns}:lost", args[0])

    return app


def _seed_001(app: Any, body: Any, fail_max: int, reset_timeout: float) -> Any:
    """The per-host prior art, as published: pybreaker in process memory, the pause
    deadline in a per-host ``multiprocessing.Value``, and ``qos.can_consume`` patched
    by a consumer bootstep. Here only to be measured beside redisbreaker."""
    import ctypes
    import multiprocessing
    from types import MethodType

    import pybreaker
    from celery import bootsteps

    paused_until = multiprocessing.Value(ctypes.c_double, 0.0)  # made before the pool forks

    class PauseController(pybreaker.CircuitBreakerListener):
        def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
            if new_state.name == pybreaker.STATE_OPEN:
                paused_until.value = time.time() + cb.reset_timeout

    class ConsumptionGate(bootsteps.StartStopStep):
        requires = ("celery.worker.consumer.tasks:Tasks",)

        def start(self, parent: Any) -> None:
            qos = parent.task_consumer.channel.qos
            original = qos.can_consume

            def can_consume(self: Any) -> bool:
                until = paused_until.value
                if until > 0.0 and time.time() < until:
                    return False
                return bool(original())

            qos.can_consume = MethodType(can_consume, qos)

    breaker = pybreaker.CircuitBreaker(
        fail_max=fail_max,
        reset_timeout=reset_timeout,
        throw_new_error_on_trip=False,
        listeners=[PauseController()],
    )
    app.steps["consumer"].add(ConsumptionGate)

    def guarded(i: int) -> Any:
        return breaker.call(body, i)

    return app.task(name=TASK)(guarded)


def __getattr__(name: str) -> Any:
    # The worker's app is built on demand from RB_DEMO_* variables: importing this
    # module to call run() must not need them.
    if name == "app":
        app = _make_app()
        globals()["app"] = app
        return app
    raise AttributeError(name)


# -- the driver side ---------------------------------------------------------------------


def measure(
    url: str,
    with_breaker: bool,
    *,
    healthy: int = 2,
    tasks: int = 20,
    work: float = 0.5,
    fail_max: int = 2,
    reset_timeout: float = 2.0,
    pool: str = "prefork",
    timeout: float = 45.0,
    mode: str | None = None,
) -> dict[str, Any]:
    """Run the scenario once with real workers; return what the broken worker did.

    Keys: ``tasks``, ``broken_taken`` (messages it received), ``broken_ran`` (task
    bodies it started), ``broken_failed``, ``succeeded``, ``lost`` (never succeeded),
    ``makespan_s``, ``trips`` (open periods of its breaker; 0 without one), and
    ``with_breaker``. ``mode="seed"`` runs the per-host prior art instead.
    """
    from celery import Celery

    from redisbreaker.testing.workers import CeleryWorker

    ns = f"rbdemo-{uuid.uuid4().hex[:8]}"
    env = {
        "RB_DEMO_NS": ns,
        "RB_DEMO_WORK": repr(work),
        "RB_DEMO_BREAKER": "seed" if mode == "seed" else "1" if with_breaker else "0",
        "RB_DEMO_FAIL_MAX": str(fail_max),
        "RB_DEMO_RESET": repr(reset_timeout),
    }
    common: dict[str, Any] = {
        "broker_url": url,
        "pool": pool,
        "concurrency": 1,
        "extra_args": ["-O", "fair"],
    }
    workers = [
        CeleryWorker(
            "benchmarks.broken_worker",
            name=f"{ns}-{BROKEN}",
            env={**env, "RB_DEMO_ROLE": BROKEN},
            **common,
        )
    ] + [
        CeleryWorker(
            "benchmarks.broken_worker",
            name=f"{ns}-{HEALTHY}{i}",
            env={**env, "RB_DEMO_ROLE": HEALTHY},
            **common,
        )
        for i in range(healthy)
    ]
    r = redis.Redis.from_url(url)
    sender = Celery("demo_driver", broker=url)
    try:
        with ThreadPoolExecutor(len(workers)) as pool_:
            list(pool_.map(lambda w: w.start(), workers))
        start = time.monotonic()
        for i in range(tasks):
            sender.send_task(TASK, args=[i], queue=ns)
        while time.monotonic() - start < timeout:
            finished = int(r.scard(f"{ns}:done")) + int(r.scard(f"{ns}:lost"))
            if finished >= tasks:
                break
            time.sleep(0.05)
        makespan = time.monotonic() - start
    finally:
        for w in workers:
            w.stop()
        sender.close()
    broken = workers[0].hostname

    def count(key: str) -> int:
        raw = r.hget(f"{ns}:{key}", broken)
        return int(raw) if raw else 0

    trips = 0
    if with_breaker:
        state = r.get(f"{ns}:cb{{{_tag(f'{TASK}|worker={broken}')}}}:s")
        trips = int(stored.decode(state)["trips"]) if isinstance(state, bytes) else 0
    succeeded = int(r.scard(f"{ns}:done"))
    result = {
        "with_breaker": with_breaker,
        "tasks": tasks,
        "broken_taken": count("taken"),
        "broken_ran": count("ran"),
        "broken_failed": count("failed"),
        "succeeded": succeeded,
        "lost": tasks - succeeded,
        "makespan_s": round(makespan, 2),
        "trips": trips,
        "logs": {w.hostname: w.log() for w in workers},
    }
    r.close()
    return result


def _tag(name: str) -> str:
    from redisbreaker.keys import escape_tag

    return escape_tag(name)


def run(url: str) -> None:
    """Run the scenario without and with redisbreaker and print them side by side."""
    without = measure(url, with_breaker=False)
    with_ = measure(url, with_breaker=True)
    rows = [
        ("tasks sent", "tasks"),
        ("taken by the broken worker", "broken_taken"),
        ("failed on the broken worker", "broken_failed"),
        ("succeeded", "succeeded"),
        ("lost (never succeeded)", "lost"),
        ("makespan (s)", "makespan_s"),
    ]
    print(
        "One broken worker (fails at once) and 2 healthy ones "
        "(0.5 s a task), 20 tasks, real Celery workers:\n"
    )
    print(f"{'':32}{'without':>12}{'with redisbreaker':>20}")
    for label, key in rows:
        print(f"{label:32}{without[key]!s:>12}{with_[key]!s:>20}")


if __name__ == "__main__":
    import sys

    run(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("REDISBREAKER_URL", ""))
