"""The worker app of the dead-letter tests, configured from the environment.

``CELERY_BROKER_URL`` is the broker (Redis or RabbitMQ); ``RB_REDIS`` the Redis for
the library and the test's notes (defaults to the broker); ``RB_NS`` namespaces the
queue, the prefix and the notes. ``DLQ_HEALTHY=1`` makes the task succeed (the cause
is fixed); ``DLQ_STALL=1`` makes the dead-letter write hang after noting that it began
(so a test can kill the worker in the middle of it).
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery, Task

import redisbreaker.celery
from redisbreaker.celery import deadletter

BROKER = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
REDIS = os.environ.get("RB_REDIS", BROKER)
NS = os.environ.get("RB_NS", "dlq")

app = Celery("dlq_app", broker=BROKER)
app.conf.update(
    task_default_queue=NS,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    # A killed worker's unacknowledged message comes back after this (Redis broker),
    # at kombu's next sweep (every interval x throttle seconds).
    broker_transport_options={
        "visibility_timeout": 5,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    },
    redisbreaker_url=REDIS,
    redisbreaker_prefix=f"{NS}:",
    redisbreaker_dead_letter=True,
)
redisbreaker.celery.install(app)


def notes() -> redis.Redis:
    return redis.Redis.from_url(REDIS)


@app.task(name="dlq.fetch", bind=True, max_retries=1)
def fetch(self: Task[Any, Any], job: int) -> int:
    """Fails while the downstream is down; retried once, then failed for good."""
    if os.environ.get("DLQ_HEALTHY") == "1":
        notes().sadd(f"{NS}:done", job)
        return job
    try:
        raise ConnectionError(f"downstream down for job {job}")
    except ConnectionError as exc:
        raise self.retry(exc=exc, countdown=0.05) from exc


@app.task(name="dlq.quiet", dead_letter=False, max_retries=0)
def quiet(job: int) -> None:
    """Opted out: its failures are not dead-lettered."""
    raise ValueError(f"quiet job {job}")


@app.task(name="dlq.second_time", bind=True, max_retries=3)
def second_time(self: Task[Any, Any], job: int) -> int:
    """Fails at its first try, succeeds at its second."""
    if not self.request.retries:
        raise self.retry(exc=TimeoutError(f"slow start {job}"), countdown=0.05)
    return job


@app.task(name="dlq.first_time")
def first_time(job: int) -> int:
    """Succeeds at once: writes no history."""
    notes().sadd(f"{NS}:first", job)
    return job


@redisbreaker.celery.shared_breaker(fail_max=1, reset_timeout=300, on_open="fail")
@app.task(name="dlq.guarded", acks_late=True)
def guarded(job: int) -> int:
    """Fails (and trips its breaker); later calls are refused, which is no failure."""
    raise ConnectionError(f"payments down for job {job}")


if os.environ.get("DLQ_STALL") == "1":
    _add = deadletter.DeadLetters.add

    def _stalled_add(self: deadletter.DeadLetters, queue: str, fields: dict[str, Any]) -> Any:
        notes().set(f"{NS}:writing", fields["id"])
        time.sleep(600)  # killed here
        return _add(self, queue, fields)

    deadletter.DeadLetters.add = _stalled_add  # type: ignore[method-assign]
