"""The asyncio twin behaves like the sync breaker (same core)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio

from redisbreaker import CircuitOpenError, State
from redisbreaker.aio import SharedBreaker
from redisbreaker.testing import VirtualClock
from redisbreaker.testing.servers import RedisServer
from tests.helpers import Boom


@pytest.fixture
def aurl(redis_server: RedisServer) -> str:
    redis_server.client().flushall()
    return redis_server.url


async def _ok() -> str:
    return "ok"


async def _boom() -> None:
    raise Boom()


def test_async_cycle(aurl: str) -> None:
    """call, decorator and async with; trip, refuse, trial, close."""

    async def main() -> list[tuple[State, State]]:
        changes: list[tuple[State, State]] = []
        client = redis.asyncio.Redis.from_url(aurl)
        clock = VirtualClock()
        b = SharedBreaker(
            "aio",
            client=client,
            fail_max=2,
            reset_timeout=30,
            on_state_change=lambda o, n: changes.append((o, n)),
        )
        clock.attach(b)
        assert await b.call(_ok) == "ok"
        guarded = b(_ok)
        assert await guarded() == "ok"
        async with b:
            pass
        for _ in range(2):
            with pytest.raises(Boom):
                await b.call(_boom)
        with pytest.raises(CircuitOpenError):
            await b.call(_ok)
        snap = await b.snapshot()
        assert (snap.state, snap.retry_after) == (State.OPEN, 30)
        clock.advance(29)  # past the cached view: Redis refuses, 1 s left
        with pytest.raises(CircuitOpenError) as info:
            await b.call(_ok)
        assert info.value.retry_after == 1
        clock.advance(1)
        assert await b.call(_ok) == "ok"
        assert (await b.snapshot()).state is State.CLOSED
        await b.force_open()
        with pytest.raises(CircuitOpenError):
            await b.call(_ok)
        await b.reset()
        await client.aclose()
        return changes

    changes = asyncio.run(main())
    assert changes == [
        (State.CLOSED, State.OPEN),
        (State.OPEN, State.HALF_OPEN),
        (State.HALF_OPEN, State.CLOSED),
        (State.CLOSED, State.FORCED_OPEN),
        (State.FORCED_OPEN, State.CLOSED),
    ]


def test_async_and_sync_share_one_breaker(aurl: str) -> None:
    """A sync process and an asyncio process see the same shared state."""
    import redisbreaker

    sync = redisbreaker.SharedBreaker("both", client=redis.Redis.from_url(aurl), fail_max=2)

    async def main() -> State:
        b = SharedBreaker("both", client=redis.asyncio.Redis.from_url(aurl), fail_max=2)
        for _ in range(2):
            with pytest.raises(Boom):
                await b.call(_boom)
        return (await b.snapshot()).state

    assert asyncio.run(main()) is State.OPEN
    assert sync.snapshot().state is State.OPEN
