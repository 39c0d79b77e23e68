"""Issue #12: dead letters and attempt history, with real workers on the Redis broker
and on RabbitMQ."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from functools import partial
from pathlib import Path

import pytest
import redis
from celery import Celery

from redisbreaker.celery.deadletter import DeadLetters
from redisbreaker.testing import CeleryWorker
from tests.helpers import wait_for
from tests.support.celery_apps.helpers import namespace
from tests.support.rabbitmq import RabbitServer

pytestmark = [pytest.mark.celery, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.support.celery_apps.dlq_app"


def _worker(broker: str, redis_url: str, ns: str, **env: str) -> CeleryWorker:
    return CeleryWorker(
        APP, broker_url=broker, name=f"{ns}-{uuid.uuid4().hex[:4]}",
        env={"RB_NS": ns, "RB_REDIS": redis_url, **env},
    )  # fmt: skip


def _sender(broker: str, ns: str) -> Celery:
    app = Celery("dlq_sender", broker=broker)
    app.conf.update(task_default_queue=ns)
    return app


def _logged(worker: CeleryWorker, text: str) -> bool:
    return text in worker.log()


def _store(redis_url: str, ns: str) -> DeadLetters:
    return DeadLetters(client=redis.Redis.from_url(redis_url), prefix=f"{ns}:")


def _cli(broker: str, redis_url: str, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CELERY_BROKER_URL": broker, "RB_REDIS": redis_url, "RB_NS": ns}
    return subprocess.run(
        [sys.executable, "-m", "redisbreaker.cli", "-A", f"{APP}:app", *args],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
    )  # fmt: skip


def _fail_then_replay(broker: str, redis_url: str) -> None:
    """10 tasks that always fail with max_retries=1 end as 10 dead letters with the
    exception and 2 attempts; with the cause fixed, `dlq replay --all` makes all 10
    succeed and leaves the store empty."""
    ns = namespace()
    notes = redis.Redis.from_url(redis_url)
    store = _store(redis_url, ns)
    sender = _sender(broker, ns)
    with _worker(broker, redis_url, ns) as w:
        for job in range(10):
            sender.send_task("dlq.fetch", args=[job], queue=ns)
        assert wait_for(lambda: len(store.entries()) == 10, 90)
        log = w.log()
    entries = store.entries()
    assert sorted(e.arguments()[0][0] for e in entries) == list(range(10)), log[-3000:]
    for e in entries:
        assert (e.queue, e.task, e.reason) == (ns, "dlq.fetch", "failed")
        assert e.exc_type == "ConnectionError" and "downstream down" in e.exc_message
        assert "ConnectionError" in e.traceback
        assert e.headers["task"] == "dlq.fetch" and e.headers["id"] == e.task_id
        assert [a.outcome for a in e.attempts] == ["retry", "failed"], e.attempts
        assert e.attempts[0].countdown_s is not None and e.attempts[0].worker == w.hostname
    stats = json.loads(_cli(broker, redis_url, ns, "dlq", "stats", "--json").stdout)
    assert stats[ns]["entries"] == 10 and stats[ns]["added"] == 10
    shown = _cli(broker, redis_url, ns, "dlq", "show", entries[0].entry_id)
    assert "attempt:" in shown.stdout and "ConnectionError" in shown.stdout
    with _worker(broker, redis_url, ns, DLQ_HEALTHY="1") as healthy:
        done = _cli(broker, redis_url, ns, "dlq", "replay", "--all")
        assert done.returncode == 0, done.stderr
        assert "replayed 10 of 10" in done.stdout
        assert wait_for(lambda: notes.scard(f"{ns}:done") == 10, 60)
        assert healthy.log().count("succeeded") >= 10
    assert store.entries() == []
    assert store.stats()[ns]["replayed"] == 10


def test_dead_letters_and_replay_on_the_redis_broker(redis_url: str) -> None:
    """The whole cycle on the Redis broker."""
    _fail_then_replay(redis_url, redis_url)


@pytest.mark.rabbitmq
def test_dead_letters_and_replay_on_rabbitmq(rabbit: RabbitServer, redis_url: str) -> None:
    """The whole cycle on RabbitMQ (the state in Redis)."""
    _fail_then_replay(rabbit.url, redis_url)


def test_attempt_history_only_for_tasks_that_failed(redis_url: str) -> None:
    """A task that fails once then succeeds has 2 attempts; one that succeeds at once
    writes nothing; opted-out tasks and tasks refused by an open breaker are never
    dead-lettered (nor is a refusal an attempt), a task failing against the breaker is."""
    from redisbreaker.celery import attempts
    from tests.support.celery_apps import dlq_app

    ns = namespace()
    notes = redis.Redis.from_url(redis_url)
    sender = _sender(redis_url, ns)
    dlq_app.app.conf.update(redisbreaker_url=redis_url, redisbreaker_prefix=f"{ns}:")
    with _worker(redis_url, redis_url, ns) as w:
        ok = sender.send_task("dlq.second_time", args=[1], queue=ns)
        first_time = sender.send_task("dlq.first_time", args=[2], queue=ns)
        quiet = sender.send_task("dlq.quiet", args=[3], queue=ns)
        first = sender.send_task("dlq.guarded", args=[4], queue=ns)
        assert wait_for(lambda: len(_store(redis_url, ns).entries()) == 1, 60)
        refused = sender.send_task("dlq.guarded", args=[5], queue=ns)
        for task_id in (quiet.id, refused.id):  # both ended in failure, as the log says
            assert wait_for(partial(_logged, w, f"[{task_id}] raised unexpected"), 60)
        assert wait_for(lambda: notes.scard(f"{ns}:first") == 1, 60)
        assert wait_for(
            lambda: [a.outcome for a in attempts(ok.id, dlq_app.app)] == ["retry", "succeeded"],
            60,
        )
    assert "CircuitOpenError" in w.log()
    assert attempts(first_time.id, dlq_app.app) == []  # succeeded at once: nothing written
    assert attempts(refused.id, dlq_app.app) == []
    (entry,) = _store(redis_url, ns).entries()
    assert entry.task_id == first.id and entry.exc_type == "ConnectionError"
    assert [a.outcome for a in attempts(quiet.id, dlq_app.app)] == []  # opted out entirely


def test_a_worker_killed_while_dead_lettering_loses_nothing(redis_url: str) -> None:
    """SIGKILL in the middle of the dead-letter write: the message stays in the broker
    (unacknowledged), runs again on another worker and is dead-lettered exactly once."""
    ns = namespace()
    notes = redis.Redis.from_url(redis_url)
    store = _store(redis_url, ns)
    sender = _sender(redis_url, ns)
    stalled = _worker(redis_url, redis_url, ns, DLQ_STALL="1")
    with stalled:
        task = sender.send_task("dlq.fetch", args=[7], queue=ns)
        assert wait_for(lambda: notes.get(f"{ns}:writing") == task.id.encode(), 60)
        stalled.kill()
    assert store.entries() == []
    with _worker(redis_url, redis_url, ns):
        assert wait_for(lambda: len(store.entries()) == 1, 90)
    (entry,) = store.entries()
    assert entry.task_id == task.id
