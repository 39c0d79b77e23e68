"""Redis killed mid-run: each outage policy behaves as documented."""

from __future__ import annotations

import logging
import time

import pytest
import redis

from redisbreaker import BreakerUnavailableError, CircuitOpenError, SharedBreaker, State
from redisbreaker.embedded import RedisServer
from redisbreaker.outage import rate_limited
from tests.helpers import Boom, boom, fail_n, ok


def client(server: RedisServer) -> redis.Redis:
    return redis.Redis(port=server.port, socket_timeout=0.5, socket_connect_timeout=0.5)


@pytest.fixture(autouse=True)
def _fresh_rate_limit() -> None:
    rate_limited._last.clear()


def test_fail_open_runs_calls_and_logs_rate_limited(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """fail_open: calls run while Redis is down; the outage is logged, not per call."""
    b = SharedBreaker("fo", client=client(private_redis), fail_max=2, sync_interval=0.05)
    assert b.call(ok) == "ok"
    private_redis.kill()
    late = SharedBreaker("fo-late", client=client(private_redis), fail_max=2)  # no raise
    with caplog.at_level(logging.WARNING, logger="redisbreaker"):
        for _ in range(50):
            assert b.call(ok) == "ok"
            with pytest.raises(Boom):
                b.call(boom)
        assert late.call(ok) == "ok"
    outage_logs = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert 1 <= len(outage_logs) <= 2  # one per breaker, however many calls


def test_fail_closed_refuses_with_a_circuit_open_error(private_redis: RedisServer) -> None:
    """fail_closed: calls are refused with BreakerUnavailableError (a CircuitOpenError)."""
    b = SharedBreaker("fc", client=client(private_redis), fail_max=2, on_outage="fail_closed")
    private_redis.kill()
    with pytest.raises(BreakerUnavailableError) as info:
        b.call(ok)
    assert isinstance(info.value, CircuitOpenError)
    assert info.value.state == "unavailable"


def test_local_policy_trips_in_process_then_rejoins(private_redis: RedisServer) -> None:
    """local: an in-process breaker with the same settings stands in, then Redis rules again."""
    b = SharedBreaker(
        "lo", client=client(private_redis), fail_max=3, reset_timeout=30, on_outage="local"
    )
    fail_n(b.call, 1)  # recorded in Redis (AOF keeps it across the restart)
    private_redis.kill()
    fail_n(b.call, 3)
    with pytest.raises(CircuitOpenError):
        b.call(ok)  # the local stand-in tripped
    private_redis.restart()
    time.sleep(1.1)  # the core retries Redis at most once a second during an outage
    assert b.call(ok) == "ok"  # shared state: closed, one failure before the outage
    snap = b.snapshot()
    assert snap.state is State.CLOSED


def test_rejoins_shared_state_after_restart(private_redis: RedisServer) -> None:
    """fail_open: once Redis is back, failures are recorded and trip the shared breaker."""
    b = SharedBreaker("rejoin", client=client(private_redis), fail_max=2)
    private_redis.kill()
    fail_n(b.call, 5)
    private_redis.restart()
    time.sleep(1.1)
    fail_n(b.call, 2)
    assert b.snapshot().state is State.OPEN


def test_snapshot_raises_storage_error_when_down(private_redis: RedisServer) -> None:
    """Reading the shared state while Redis is down raises StorageError, naming the breaker."""
    from redisbreaker import StorageError

    b = SharedBreaker("snap", client=client(private_redis), fail_max=2)
    private_redis.kill()
    with pytest.raises(StorageError, match="snap"):
        b.snapshot()
