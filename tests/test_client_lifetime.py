"""A Redis client the application drops is freed, with its connections, once the
library's objects that used it are gone: the per-client pub/sub hub and script registry
hold it weakly. And a client that only a breaker holds keeps working for that breaker."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
import redis.asyncio.retry
from redis.backoff import NoBackoff
from redis.retry import Retry

from redisbreaker import CircuitOpenError, SharedBreaker, Transaction, events
from redisbreaker.aio import SharedBreaker as AsyncSharedBreaker
from redisbreaker.testing.servers import RedisServer
from tests.helpers import wait_for

# Long enough for a loaded CI box; the test ends as soon as the client is gone.
GONE_WITHIN = 60.0


@pytest.fixture(autouse=True)
def _quick_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub whose listeners are all gone closes after IDLE_EXIT (5 s): shorten it."""
    monkeypatch.setattr(events, "IDLE_EXIT", 0.2)


def _client(server: RedisServer, name: str) -> redis.Redis:
    return redis.Redis(
        port=server.port, client_name=name, socket_timeout=5, retry=Retry(NoBackoff(), 0)
    )


def _connections(server: RedisServer, name: str) -> int:
    """The server's connections whose client name is ``name``."""
    with redis.Redis(port=server.port) as admin:
        return sum(1 for c in admin.client_list() if c.get("name") == name)


def _collected(ref: Callable[[], Any]) -> bool:
    gc.collect()
    return ref() is None


def test_a_dropped_client_is_freed_with_its_connections(redis_server: RedisServer) -> None:
    name = "lifetime-sync"
    client = _client(redis_server, name)
    breaker = SharedBreaker("lifetime-sync", client=client, fail_max=2)
    assert breaker.call(lambda: 1) == 1
    breaker.sync()
    tx = Transaction.begin(1, timeout=30, client=client)
    tx.vote(0, True)
    assert tx.wait(timeout=10).committed
    hub = events.hub_for(client)  # (it holds the client weakly)
    assert hub.connected.wait(30)  # the subscription is confirmed
    assert _connections(redis_server, name) >= 2  # commands, and the hub's subscriber
    ref = weakref.ref(client)
    del client, breaker, tx

    assert wait_for(lambda: _collected(ref), timeout=GONE_WITHIN)
    assert wait_for(lambda: _connections(redis_server, name) == 0, timeout=GONE_WITHIN)


def test_many_clients_made_and_dropped_leave_nothing_behind(redis_server: RedisServer) -> None:
    """The web-request pattern: a client and a breaker per request."""
    refs = []
    for i in range(10):
        client = _client(redis_server, "lifetime-many")
        breaker = SharedBreaker(f"lifetime-many-{i % 3}", client=client)
        breaker.call(lambda: 1)
        breaker.sync()
        refs.append(weakref.ref(client))
        del client, breaker

    assert wait_for(lambda: all(_collected(ref) for ref in refs), timeout=GONE_WITHIN)
    assert wait_for(lambda: _connections(redis_server, "lifetime-many") == 0, timeout=GONE_WITHIN)


def test_a_client_only_a_breaker_holds_keeps_serving_it(redis_server: RedisServer) -> None:
    """The registries hold the client weakly; the breaker holds it, so its scripts and its
    hub (events from other processes' breakers) go on working after a collection."""
    breaker = SharedBreaker(  # its view lasts a minute: only an event can change it sooner
        "lifetime-held", client=_client(redis_server, "lifetime-held"), sync_interval=60
    )
    assert breaker.call(lambda: 1) == 1
    gc.collect()
    assert events.hub_for(breaker.client).connected.wait(30)  # the subscription is confirmed
    other = SharedBreaker("lifetime-held", client=_client(redis_server, "lifetime-other"))
    other.force_open(reason="drill")

    def refused() -> bool:
        try:
            breaker.call(lambda: 1)
        except CircuitOpenError:
            return True
        return False

    assert wait_for(refused, timeout=30)  # heard over the hub
    breaker.sync()
    assert breaker.snapshot().state.value == "forced_open"


def test_a_dropped_asyncio_client_is_freed(redis_server: RedisServer) -> None:
    name = "lifetime-aio"

    async def main() -> None:
        client = aredis.Redis(
            port=redis_server.port, client_name=name, socket_timeout=5,
            retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
        )  # fmt: skip

        async def one() -> int:
            return 1

        breaker = AsyncSharedBreaker("lifetime-aio", client=client)
        assert await breaker.call(one) == 1
        await breaker.sync()
        ref = weakref.ref(client)
        del client, breaker
        deadline = asyncio.get_running_loop().time() + GONE_WITHIN
        while not _collected(ref) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert ref() is None

    asyncio.run(main())
    assert wait_for(lambda: _connections(redis_server, name) == 0, timeout=GONE_WITHIN)
