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


# -- the store itself: cap, idempotency, concurrent and interrupted replays ---------------


def _fields(task_id: str, queue: str = "q") -> dict[str, object]:
    import msgpack

    return {
        "id": task_id, "task": "t.job", "queue": queue, "reason": "failed", "worker": "w@h",
        "exc_type": "ValueError", "exc_message": "bad", "traceback": "Traceback ...",
        "exchange": "", "routing_key": queue,
        "body": json.dumps([[1], {}, {"callbacks": None, "errbacks": None, "chain": None,
                                     "chord": None}]).encode(),
        "headers": msgpack.packb({"task": "t.job", "id": task_id, "retries": 3}),
        "properties": msgpack.packb({"correlation_id": task_id, "delivery_mode": 2,
                                     "priority": 0, "body_encoding": "base64"}),
        "content_type": "application/json", "content_encoding": "utf-8",
        "attempts": msgpack.packb([]),
    }  # fmt: skip


def _app_for(redis_url: str, ns: str) -> Celery:
    app = Celery(f"dlq_store_{ns}", broker=redis_url)
    app.conf.update(redisbreaker_url=redis_url, redisbreaker_prefix=f"{ns}:",
                    redisbreaker_dead_letter_maxlen=3)  # fmt: skip
    return app


def test_the_store_is_capped_and_idempotent(redis_url: str) -> None:
    """At the cap the oldest entries are dropped and counted; a task id is stored once."""
    ns = namespace()
    store = DeadLetters(_app_for(redis_url, ns))
    for i in range(5):
        store.add("q", _fields(f"t{i}"))
    assert store.add("q", _fields("t4")) == (store.entries()[-1].entry_id, False)
    assert [e.task_id for e in store.entries()] == ["t2", "t3", "t4"]
    assert store.stats()["q"] == {"entries": 3, "added": 5, "dropped": 2, "replayed": 0,
                                  "purged": 0}  # fmt: skip
    assert store.add("q", _fields("t0"))[1]  # dropped entries left the index too


def test_two_replays_of_one_entry_send_it_once(redis_url: str, r: redis.Redis) -> None:
    """Operators replaying the same entry at the same time: one wins the claim in Lua."""
    import threading

    ns = namespace()
    app = _app_for(redis_url, ns)
    store = DeadLetters(app)
    entry_id, _ = store.add(ns, _fields("once", queue=ns))
    sent: list[list[str]] = []
    barrier = threading.Barrier(4)

    def replay() -> None:
        barrier.wait()
        sent.append(DeadLetters(app).replay([entry_id]))

    threads = [threading.Thread(target=replay) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(len(s) for s in sent) == [0, 0, 0, 1]
    assert r.llen(ns) == 1  # one message in the queue
    (message,) = [json.loads(m) for m in r.lrange(ns, 0, -1)]
    assert message["headers"]["id"] == "once" and message["headers"]["retries"] == 0
    assert store.entries() == [] and store.stats()[ns]["replayed"] == 1


def test_an_interrupted_replay_leaves_the_entry(redis_url: str, r: redis.Redis) -> None:
    """A replayer that dies after its claim leaves the entry listed (replaying); once its
    lease ends, another replay sends it: duplicated at worst, never lost."""
    from redisbreaker import scripts
    from redisbreaker.keys import KeySpace

    ns = namespace()
    app = _app_for(redis_url, ns)
    store = DeadLetters(app)
    entry_id, _ = store.add(ns, _fields("orphan", queue=ns))
    ks = KeySpace.of(f"{ns}:", "dlq", ns)
    keys = [ks.key("s"), ks.key("i"), ks.key("n"), ks.key("c")]
    claim = scripts.register(r, "dlq_claim")
    sid = entry_id.split("/", 1)[1]
    assert claim(keys=keys, args=["", sid, "dead-replayer", 60_000])[0] == b"ok"
    (entry,) = store.entries()
    assert entry.replaying
    assert store.replay([entry_id]) == []  # held by the dead replayer's lease
    assert claim(keys=keys, args=["", sid, "dead-replayer", 1])[0] == b"ok"  # lease: 1 ms
    assert wait_for(lambda: store.replay([entry_id], new_id=True) != [], 5)
    assert store.entries() == []
    (message,) = [json.loads(m) for m in r.lrange(ns, 0, -1)]
    assert message["headers"]["id"] != "orphan"  # --new-id


def test_dead_letters_show_in_the_metrics(redis_url: str, r: redis.Redis) -> None:
    """Per-queue dead-letter counts are exported."""
    from prometheus_client import CollectorRegistry, generate_latest

    from redisbreaker.metrics import FleetCollector

    ns = namespace()
    store = DeadLetters(_app_for(redis_url, ns))
    store.add("video", _fields("v1", "video"))
    registry = CollectorRegistry()
    registry.register(FleetCollector(r, prefix=f"{ns}:"))
    text = generate_latest(registry).decode()
    assert 'redisbreaker_dead_letters{queue="video"} 1.0' in text
    assert 'redisbreaker_dead_letters_moved_total{kind="added",queue="video"} 1.0' in text or (
        'redisbreaker_dead_letters_moved_total{queue="video",kind="added"} 1.0' in text
    )
