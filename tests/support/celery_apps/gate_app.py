"""The worker app of the gate tests, configured from the environment.

``CELERY_BROKER_URL`` is the broker; ``RB_REDIS`` the Redis for breakers and for the
tasks' own bookkeeping (defaults to the broker); ``RB_NS`` namespaces the queue, the
key prefix and the bookkeeping keys; ``RB_HOST`` stands for the host name, so workers
on one machine can play separate hosts. Every task records in Redis what it did.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery, current_task

import redisbreaker.celery
from redisbreaker.celery import shared_breaker

BROKER = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
REDIS = os.environ.get("RB_REDIS", BROKER)
NS = os.environ.get("RB_NS", "gate")
RESET = float(os.environ.get("RB_RESET", "5"))

app = Celery("gate_app", broker=BROKER, backend=os.environ.get("CELERY_RESULT_BACKEND"))
app.conf.update(
    task_default_queue=NS,
    worker_prefetch_multiplier=1,
    redisbreaker_url=REDIS,
    redisbreaker_prefix=f"{NS}:",
    redisbreaker_hostname=os.environ.get("RB_HOST") or None,
    redisbreaker_retry_jitter=0.2,
    broker_connection_retry_on_startup=True,
)
redisbreaker.celery.install(app)

_clients: dict[int, redis.Redis] = {}


def db() -> redis.Redis:
    pid = os.getpid()
    if pid not in _clients:
        _clients.clear()
        _clients[pid] = redis.Redis.from_url(REDIS)
    return _clients[pid]


def _record(kind: str, i: Any) -> str:
    node = str(current_task.request.hostname)
    db().rpush(f"{NS}:{kind}", f"{node}|{i}|{current_task.request.retries}")
    return node


@shared_breaker(scope="cluster", pause="cluster", fail_max=2, reset_timeout=RESET)
@app.task(name="gate.downstream", acks_late=True)
def downstream(i: int) -> int:
    """Calls a downstream service that is down while the key ``<ns>:down`` exists."""
    _record("ran", i)
    if db().exists(f"{NS}:down"):
        raise ConnectionError("downstream is down")
    time.sleep(0.1)
    db().sadd(f"{NS}:done", i)
    return i


@app.task(name="gate.plain", acks_late=True)
def plain(i: int) -> int:
    """No breaker: used to see whether a paused worker fetches anything."""
    _record("ran", i)
    time.sleep(0.05)
    db().sadd(f"{NS}:done", i)
    return i


def _policy_task(policy: str) -> Any:
    @shared_breaker(f"policy-{policy}", on_open=policy, fail_max=1, reset_timeout=RESET)  # type: ignore[arg-type]
    @app.task(name=f"gate.policy_{policy}", acks_late=True)
    def task(i: int) -> str:
        _record(f"ran_{policy}", i)
        db().sadd(f"{NS}:done_{policy}", i)
        return "ran"

    return task


policy_retry = _policy_task("retry")
policy_reject = _policy_task("reject")
policy_fail = _policy_task("fail")
policy_skip = _policy_task("skip")
