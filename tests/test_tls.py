"""TLS (issue 15, item 5): a TLS-only Redis with a private CA, end to end, and a
certificate that does not verify reported as a certificate error, not an outage."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import redis

import redisbreaker
import redisbreaker.celery
from redisbreaker import SharedBreaker, State, Transaction
from redisbreaker.config import client_from_url
from redisbreaker.errors import CircuitOpenError, StorageError
from redisbreaker.events import hub_for
from redisbreaker.state import Transition
from redisbreaker.testing.servers import RedisServer
from tests.helpers import fail_n, ok, started, wait_for
from tests.support.celery_apps.helpers import namespace, sender, wait_log, worker


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[RedisServer]:
    server = started(RedisServer(tls=True), "a TLS redis-server")
    yield server
    server.stop()


def test_breakers_events_and_transactions_over_tls(tls_redis: RedisServer) -> None:
    """rediss:// with ?ssl_ca_certs=: the whole path, pub/sub included (another
    client's cached view learns of the trip by its event)."""
    assert tls_redis.url.startswith("rediss://") and "ssl_ca_certs=" in tls_redis.url
    redisbreaker.configure(url=tls_redis.url)
    other = client_from_url(tls_redis.url)
    watcher = SharedBreaker("tls", client=other, fail_max=2)
    seen: list[Transition] = []
    watcher.subscribe(seen.append)
    watcher.call(ok)  # caches "closed", joins the pub/sub hub
    assert wait_for(lambda: hub_for(other).connected.is_set(), 10)
    b = SharedBreaker("tls", fail_max=2)
    fail_n(b.call, 2)
    assert wait_for(lambda: [t.new for t in seen] == [State.OPEN], 10)  # by its event
    with pytest.raises(CircuitOpenError):
        watcher.call(ok)
    tx = Transaction.begin(2, timeout=30)
    tx.vote(0, True)
    assert tx.vote(1, True).outcome.value == "commit"


def test_no_verification_is_accepted_when_asked_for(tls_redis: RedisServer) -> None:
    """?ssl_cert_reqs=none: encrypted, certificate not checked (documented as such)."""
    url = f"rediss://127.0.0.1:{tls_redis.port}/0?ssl_cert_reqs=none"
    b = SharedBreaker("tls-none", client=client_from_url(url), fail_max=1)
    fail_n(b.call, 1)
    assert b.snapshot().state is State.OPEN


def test_an_unverified_certificate_is_a_certificate_error(
    tls_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Without the CA, the handshake fails: said at ERROR as a certificate problem with
    what to do, never as "Redis unreachable"; the next call asks again at once."""
    url = f"rediss://127.0.0.1:{tls_redis.port}/0"
    b = SharedBreaker("tls-bad", client=client_from_url(url), fail_max=1)
    with caplog.at_level(logging.WARNING, logger="redisbreaker"):
        assert b.call(ok) == "ok"  # fail_open: the call runs
    messages = [r.getMessage() for r in caplog.records if r.name == "redisbreaker"]
    mine = [m for m in messages if m.startswith("breaker 'tls-bad'")]
    assert mine and "certificate error" in mine[0] and "ssl_ca_certs" in mine[0], messages
    assert not any("unreachable" in m for m in messages), messages
    assert b.core.outage_since is None
    with pytest.raises(StorageError, match="certificate"):
        b.snapshot()


@pytest.mark.celery
@pytest.mark.timeout(180)
def test_the_celery_gate_over_tls(redis_url: str, r: redis.Redis, tls_redis: RedisServer) -> None:
    """A worker whose redisbreaker_url is TLS: a manual pause holds its tasks, resume
    releases them."""
    ns = namespace()
    w = worker(redis_url, ns, name="tls", redis_url=tls_redis.url)
    w.start()
    try:
        app = sender(redis_url)
        app.conf.update(redisbreaker_url=tls_redis.url, redisbreaker_prefix=f"{ns}:")
        redisbreaker.celery.pause(app, scope="queue", queue=ns)
        wait_log(w, "pauses queue")
        for i in range(3):
            app.send_task("gate.plain", args=[i], queue=ns)
        redisbreaker.celery.resume(app, scope="queue", queue=ns)
        assert wait_for(lambda: tls_redis.client().scard(f"{ns}:done") == 3, 60), w.log()
    finally:
        w.stop()
