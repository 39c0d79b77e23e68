"""The consumption gate on RabbitMQ (py-amqp): a real rabbitmq-server and real workers."""

from __future__ import annotations

import time

import amqp
import pytest
import redis

import redisbreaker.celery
from tests.support.celery_apps.helpers import namespace, sender, wait_for, wait_log, worker
from tests.support.rabbitmq import RabbitServer

pytestmark = [pytest.mark.celery, pytest.mark.rabbitmq, pytest.mark.timeout(240)]


def _queued(server: RabbitServer, queue: str) -> int:
    conn = amqp.Connection(host=f"127.0.0.1:{server.port}")
    conn.connect()
    try:
        declared = conn.channel().queue_declare(queue, passive=True)
        assert declared is not None
        return int(declared[1])  # (queue, message_count, consumer_count)
    finally:
        conn.close()


def test_manual_pause_and_resume_on_rabbitmq(
    rabbit: RabbitServer, redis_url: str, r: redis.Redis
) -> None:
    """A cluster pause stops a prefork worker on AMQP; tasks wait in RabbitMQ; resume
    runs them all."""
    ns = namespace()
    w = worker(rabbit.url, ns, name="amqp", pool="prefork", redis_url=redis_url)
    w.start()
    try:
        app = sender(rabbit.url)
        app.conf.update(redisbreaker_url=redis_url, redisbreaker_prefix=f"{ns}:")
        redisbreaker.celery.pause(app, scope="cluster", seconds=120)
        wait_log(w, "pauses queue")
        for i in range(5):
            app.send_task("gate.plain", args=[i], queue=ns)
        time.sleep(1.5)
        assert _queued(rabbit, ns) == 5, w.log()
        redisbreaker.celery.resume(app, scope="cluster")
        wait_for("all tasks done", lambda: r.scard(f"{ns}:done") == 5)
        wait_log(w, "resumes queue")
        app.close()
    finally:
        w.stop()


def test_breaker_trip_pauses_and_trial_resumes_on_rabbitmq(
    rabbit: RabbitServer, redis_url: str, r: redis.Redis
) -> None:
    """A tripped cluster breaker pauses an AMQP worker; after recovery the trial runs
    and the worker resumes; no task is lost."""
    ns = namespace()
    w = worker(rabbit.url, ns, name="trip", pool="solo", redis_url=redis_url, reset=3.0)
    w.start()
    try:
        app = sender(rabbit.url)
        r.set(f"{ns}:down", 1)
        for i in range(2):
            app.send_task("gate.downstream", args=[i], queue=ns)
        wait_log(w, "pauses queue")
        for i in range(10, 14):
            app.send_task("gate.downstream", args=[i], queue=ns)
        time.sleep(1.0)
        assert _queued(rabbit, ns) == 4, w.log()
        r.delete(f"{ns}:down")
        wait_for("all tasks done", lambda: r.scard(f"{ns}:done") == 4)
        wait_log(w, "-> trial")
        wait_log(w, "resumes queue")
        app.close()
    finally:
        w.stop()
