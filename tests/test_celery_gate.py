"""The consumption gate with real Celery workers on a Redis broker (not eager mode)."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis

import redisbreaker.celery
from benchmarks.broken_worker import measure
from redisbreaker import SharedBreaker
from redisbreaker.testing.workers import CeleryWorker
from tests.support.celery_apps.helpers import (
    namespace,
    sender,
    task_ids_in_redis_broker,
    wait_for,
    wait_log,
    worker,
)

pytestmark = [pytest.mark.celery, pytest.mark.timeout(180)]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start_all(workers: list[CeleryWorker]) -> None:
    with ThreadPoolExecutor(len(workers)) as pool:
        list(pool.map(lambda w: w.start(), workers))


def _stop_all(workers: list[CeleryWorker]) -> None:
    for w in workers:
        w.stop()


def _driver(url: str, ns: str, backend: str | None = None) -> Any:
    app = sender(url, backend)
    app.conf.update(redisbreaker_url=url, redisbreaker_prefix=f"{ns}:")
    return app


def test_broken_worker_takes_at_most_fail_max_plus_trials(redis_url: str) -> None:
    """Seed 001 scaled down: the broken worker runs fail_max plus one trial per open
    period, and every task succeeds on a healthy worker; none is lost."""
    without = measure(redis_url, with_breaker=False, tasks=12, work=0.3)
    with_ = measure(redis_url, with_breaker=True, tasks=12, work=0.3, fail_max=2)
    print({k: v for k, v in without.items() if k != "logs"})  # contrast, not asserted
    print({k: v for k, v in with_.items() if k != "logs"})
    assert with_["lost"] == 0, with_["logs"]
    assert with_["succeeded"] == 12
    assert with_["trips"] >= 1
    # fail_max failures trip it; each later trip is one failed half-open trial.
    assert 2 <= with_["broken_ran"] <= 2 + with_["trips"]


def test_cluster_scope_pauses_every_worker_and_one_trial_resumes(
    redis_url: str, r: redis.Redis
) -> None:
    """A failing downstream trips one cluster breaker: every worker (each standing for
    a host) stops fetching; after recovery exactly one trial runs, then all resume."""
    ns = namespace()
    workers = [worker(redis_url, ns, name=f"h{i}", host=f"host{i}") for i in range(3)]
    _start_all(workers)
    try:
        app = _driver(redis_url, ns)
        r.set(f"{ns}:down", 1)
        for i in range(2):
            app.send_task("gate.downstream", args=[i], queue=ns)
        for w in workers:
            wait_log(w, "pauses queue")
        for i in range(10, 16):
            app.send_task("gate.downstream", args=[i], queue=ns)
        time.sleep(1.0)
        assert r.llen(ns) == 6, "a paused worker fetched a task"
        r.delete(f"{ns}:down")
        wait_for("all tasks done", lambda: r.scard(f"{ns}:done") == 6)
        for w in workers:
            wait_log(w, "resumes queue")
        trials = [w.name for w in workers if "-> trial" in w.log()]
        assert len(trials) == 1, trials
        ran = [_text(x).split("|")[1] for x in r.lrange(f"{ns}:ran", 0, -1)]
        assert sorted(ran) == ["0", "1", "10", "11", "12", "13", "14", "15"]
    finally:
        _stop_all(workers)


def test_sigkill_while_paused_loses_no_task(redis_url: str, r: redis.Redis) -> None:
    """Tasks sent before, during and after a worker pauses: after SIGKILL each one has
    either run or is still held by the broker."""
    ns = namespace()
    w = worker(redis_url, ns, name="k", pool="prefork")
    _start_all([w])
    try:
        app = _driver(redis_url, ns)
        sent: dict[str, int] = {}

        def send(i: int) -> None:
            sent[app.send_task("gate.plain", args=[i], queue=ns).id] = i

        for i in range(3):
            send(i)
        redisbreaker.celery.pause(app, scope="worker", worker=w.hostname)
        for i in range(3, 8):
            send(i)
        wait_log(w, "pauses queue")
        after = {app.send_task("gate.plain", args=[i], queue=ns).id for i in range(8, 13)}
        assert w.process is not None
        cpu_before = _cpu_seconds(w.process.pid)
        time.sleep(2.0)
        # Paused means idle: no busy loop in the consumer (generous bound, not a timing).
        assert _cpu_seconds(w.process.pid) - cpu_before < 0.5
        w.kill()
        held = task_ids_in_redis_broker(r, ns)
        done = {int(x) for x in r.smembers(f"{ns}:done")}
        missing = [i for tid, i in sent.items() if tid not in held and i not in done]
        assert missing == [], w.log()
        assert after <= held
    finally:
        w.stop()


def test_pause_is_reapplied_after_broker_reconnect(redis_url: str, r: redis.Redis) -> None:
    """A queue-scope manual pause survives a broker reconnect: nothing is fetched until
    resume(), then everything runs."""
    ns = namespace()
    w = worker(redis_url, ns, name="rc")
    _start_all([w])
    try:
        app = _driver(redis_url, ns)
        redisbreaker.celery.pause(app, scope="queue", queue=ns, seconds=120)
        wait_log(w, "pauses queue")
        r.client_kill_filter(_type="normal", skipme=True)
        wait_log(w, "Connection to broker lost")
        wait_log(w, "starts paused")
        for i in range(5):
            app.send_task("gate.plain", args=[i], queue=ns)
        time.sleep(1.5)
        assert r.llen(ns) == 5, w.log()
        redisbreaker.celery.resume(app, scope="queue", queue=ns)
        wait_for("all tasks done", lambda: r.scard(f"{ns}:done") == 5)
    finally:
        w.stop()


def test_open_policies_with_a_real_worker(redis_url: str, r: redis.Redis) -> None:
    """retry re-sends without using a retry slot, reject requeues, fail fails with
    CircuitOpenError, skip returns None: no policy loses the task."""
    ns = namespace()
    w = worker(redis_url, ns, name="p", reset=2.0, backend=redis_url)
    _start_all([w])
    try:
        app = _driver(redis_url, ns, backend=redis_url)
        for policy in ("retry", "reject", "fail", "skip"):
            SharedBreaker(f"policy-{policy}", client=r, prefix=f"{ns}:").open(2.0)
        results = {
            p: app.send_task(f"gate.policy_{p}", args=[1], queue=ns)
            for p in ("retry", "reject", "fail", "skip")
        }
        failed = results["fail"]
        failed.get(timeout=30, propagate=False)
        assert failed.state == "FAILURE"
        # Celery rebuilds exceptions of unlisted modules as Exception: read the type.
        meta = json.loads(r.get(f"celery-task-meta-{failed.id}") or b"{}")
        assert meta["result"]["exc_type"] == "CircuitOpenError"
        assert results["skip"].get(timeout=30) is None
        assert r.scard(f"{ns}:done_skip") == 0
        assert results["retry"].get(timeout=30) == "ran"
        assert results["reject"].get(timeout=30) == "ran"
        retried = r.lrange(f"{ns}:ran_retry", 0, -1)
        assert [_text(x).rsplit("|", 1)[1] for x in retried] == ["0"]
        assert r.scard(f"{ns}:done_reject") == 1
        for result in results.values():
            result.forget()
        app.close()
    finally:
        w.stop()
