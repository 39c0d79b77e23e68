"""Helpers of the Celery gate tests: start workers of ``gate_app``, read the broker."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

from redisbreaker.testing.workers import CeleryWorker

APP = "tests.support.celery_apps.gate_app"


def namespace() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def worker(
    broker_url: str,
    ns: str,
    *,
    name: str,
    pool: str = "solo",
    host: str = "",
    redis_url: str | None = None,
    reset: float = 5.0,
    backend: str | None = None,
) -> CeleryWorker:
    env = {"RB_NS": ns, "RB_HOST": host, "RB_RESET": repr(reset)}
    if redis_url:
        env["RB_REDIS"] = redis_url
    return CeleryWorker(
        APP,
        broker_url=broker_url,
        backend_url=backend,
        pool=pool,
        concurrency=1,
        name=f"{ns}-{name}",
        env=env,
        extra_args=["-O", "fair"],
    )


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait until ``check()`` is true; fail with ``what`` if it never is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {what}")


def wait_log(w: CeleryWorker, text: str, count: int = 1, timeout: float = 30.0) -> None:
    wait_for(f"{w.name} to log {text!r} x{count}", lambda: w.log().count(text) >= count, timeout)


def task_ids_in_redis_broker(r: redis.Redis, queue: str) -> set[str]:
    """Ids of task messages still held by a Redis broker: queued or unacknowledged."""
    ids: set[str] = set()
    for raw in r.lrange(queue, 0, -1):
        ids.add(json.loads(raw)["headers"]["id"])
    for raw in r.hvals("unacked"):
        message = json.loads(raw)[0]
        ids.add(message["headers"]["id"])
    return ids


def sender(broker_url: str, backend: str | None = None) -> Any:
    from celery import Celery

    return Celery("gate_test_sender", broker=broker_url, backend=backend)
