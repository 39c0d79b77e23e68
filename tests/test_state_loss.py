"""State loss made loud (issue 15, item 7): a Redis that loses the library's data
(restarted without persistence, evicting under memory pressure, or out of memory) is
reported at ERROR as what it is, shown in snapshots, metrics and the CLI, and a
manual pause it lost is put back by the workers that held it."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis
from prometheus_client import CollectorRegistry

import redisbreaker.celery
from redisbreaker import SharedBreaker, State
from redisbreaker.celery.gate import manual_breaker
from redisbreaker.durability import eviction_risk, marker_watch
from redisbreaker.errors import CircuitOpenError
from redisbreaker.metrics import FleetCollector
from redisbreaker.testing.servers import RedisServer
from tests.helpers import fail_n, ok, started
from tests.support.celery_apps.helpers import namespace, sender, wait_for, wait_log, worker


@pytest.fixture
def volatile() -> Iterator[RedisServer]:
    """A Redis without persistence, as a cache is often run."""
    server = started(RedisServer())
    yield server
    server.stop()


def _errors(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage() for r in caplog.records
        if r.levelno == logging.ERROR and text in r.getMessage()
    ]  # fmt: skip


def test_a_restart_without_persistence_is_reported_once_per_process(
    volatile: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Two processes (two clients) each log the loss once, however often they look;
    snapshots, metrics and `redisbreaker ls` show it."""
    clients = [volatile.client(), volatile.client()]
    breakers = [SharedBreaker("payments", client=c, fail_max=1) for c in clients]
    fail_n(breakers[0].call, 1)
    assert breakers[1].snapshot().state is State.OPEN
    volatile.restart()  # no AOF: everything is gone, the open breaker with it
    with caplog.at_level(logging.ERROR, logger="redisbreaker"):
        for b in breakers:
            for _ in range(3):
                snap = b.snapshot()
    assert snap.state is State.CLOSED  # what Redis says now ...
    assert snap.data_lost_at_ms > 0  # ... and that it is not to be trusted
    assert len(_errors(caplog, "Redis lost all the data under prefix 'rb:'")) == 2
    registry = CollectorRegistry()
    registry.register(FleetCollector(clients[0]))
    lost = registry.get_sample_value("redisbreaker_data_set_lost_timestamp_seconds")
    assert lost is not None and lost * 1000 == pytest.approx(snap.data_lost_at_ms, abs=1)
    shown = subprocess.run(
        [sys.executable, "-m", "redisbreaker.cli", "--url", volatile.url, "ls"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "Redis lost the data under this prefix" in shown.stderr


def test_eviction_of_an_open_breaker_is_reported(
    volatile: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Under volatile-lru the library's keys (all with TTLs) are the only candidates:
    filling memory with keys without a TTL evicts the open breaker. The next call that
    reaches Redis finds its generation gone back, and says so."""
    r = volatile.client()
    r.config_set("maxmemory", 4 * 1024 * 1024)
    r.config_set("maxmemory-policy", "volatile-lru")
    risk = eviction_risk(r)
    assert risk is not None and "first to go" in risk
    b = SharedBreaker("evicted", client=r, fail_max=1, reset_timeout=600)
    fail_n(b.call, 1)
    with pytest.raises(CircuitOpenError):
        b.call(ok)
    blob = "x" * 10_000
    for i in range(2000):  # about 20 MB of keys without a TTL: not candidates
        try:
            r.set(f"filler:{i}", blob)
        except redis.OutOfMemoryError:
            break
        if not r.exists(*b.keys):
            break
    assert not r.exists(*b.keys), "the breaker's keys were not evicted"
    with caplog.at_level(logging.ERROR, logger="redisbreaker"):
        snap = b.sync()
    assert snap.state is State.CLOSED and snap.state_lost == 1
    (error,) = _errors(caplog, "its state in Redis is gone")
    assert "it was open" in error and "docs/redis.md" in error


def test_out_of_memory_is_named_as_such(
    volatile: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """With noeviction and full memory, a refused write is logged as out of memory,
    never as Redis being unreachable, and nothing is half-written."""
    r = volatile.client()
    b = SharedBreaker("full", client=r, fail_max=2)
    b.call(ok)
    b.sync()
    for i in range(300):  # about 3 MB, then a limit well below it: memory is full
        r.set(f"filler:{i}", "x" * 10_000)
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", 1024 * 1024)
    with pytest.raises(redis.OutOfMemoryError):
        r.set("one-more", "x")
    before = r.get(b.keys[0])
    with caplog.at_level(logging.WARNING, logger="redisbreaker"):
        fail_n(b.call, 2)
    assert r.get(b.keys[0]) == before
    messages = [x.getMessage() for x in caplog.records]
    assert any("out of memory" in m and "maxmemory" in m for m in messages), messages
    assert not any("unreachable" in m for m in messages), messages
    assert b.core.errors == 2 and (b.core.last_error or "").startswith("OutOfMemoryError")


def test_marker_watch_is_shared_per_client_and_prefix(volatile: RedisServer) -> None:
    r = volatile.client()
    assert marker_watch(r, "a:") is marker_watch(r, "a:")
    assert marker_watch(r, "a:") is not marker_watch(r, "b:")
    first = marker_watch(r, "a:").check(r)
    assert not first.replaced_a_lost_one and first.lost_at_ms == 0


@pytest.mark.celery
@pytest.mark.timeout(180)
def test_a_worker_puts_back_a_manual_pause_that_redis_lost(
    redis_url: str, r: redis.Redis, volatile: RedisServer
) -> None:
    """The drill that found it: an indefinite cluster pause holds 10 tasks; the Redis
    holding the pause restarts without persistence. The worker finds the pause gone,
    puts it back (ERROR), and the 10 tasks stay queued until resume()."""
    ns = namespace()
    w = worker(redis_url, ns, name="lost", redis_url=volatile.url)
    w.start()
    try:
        app = sender(redis_url)
        app.conf.update(redisbreaker_url=volatile.url, redisbreaker_prefix=f"{ns}:")
        redisbreaker.celery.pause(app, scope="cluster", reason="migration")
        wait_log(w, "pauses queue")
        for i in range(10):
            app.send_task("gate.plain", args=[i], queue=ns)
        volatile.restart()
        wait_log(w, "Redis lost the manual pause")
        assert "until resume()" in w.log()
        snap = manual_breaker(app, "cluster", "").snapshot()
        assert snap.state is State.FORCED_OPEN and "Redis lost this pause" in snap.reason.text
        assert r.llen(ns) == 10, w.log()[-3000:]  # nothing ran
        redisbreaker.celery.resume(app, scope="cluster")
        wait_for("the 10 tasks", lambda: volatile.client().scard(f"{ns}:done") == 10, 60)
    finally:
        w.stop()
