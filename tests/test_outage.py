"""Redis killed mid-run: each outage policy behaves as documented."""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.driver_info import DriverInfo
from redis.retry import Retry

import redisbreaker
import redisbreaker.config
from redisbreaker import BreakerUnavailableError, CircuitOpenError, SharedBreaker, State
from redisbreaker.breaker_core import OUTAGE_RETRY
from redisbreaker.outage import rate_limited
from redisbreaker.testing import VirtualClock
from redisbreaker.testing.servers import RedisServer, free_port
from tests.helpers import Boom, boom, fail_n, ok, script_calls, wait_for


def client(server: RedisServer) -> redis.Redis:
    return redis.Redis(port=server.port, socket_timeout=0.5, socket_connect_timeout=0.5)


@pytest.fixture(autouse=True)
def _fresh_rate_limit() -> None:
    rate_limited.reset()


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


# -- issue 8: an outage must cost one probe, not every call ------------------------------------


class HungServer:
    """A TCP port that accepts connections, reads what is sent, and never answers: a
    frozen Redis. ``scripts`` counts the script calls that reached it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.sock, selectors.EVENT_READ)
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def scripts(self) -> int:
        return sum(self.received.count(c) for c in (b"EVALSHA", b"evalsha", b"FCALL", b"fcall"))

    def _serve(self) -> None:
        while not self._stop:
            for key, _ in self._selector.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self.sock:
                    conn, _ = self.sock.accept()
                    conn.setblocking(False)
                    self._selector.register(conn, selectors.EVENT_READ)
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if data:
                    self.received += data
                else:
                    self._selector.unregister(sock)
                    sock.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()


@pytest.fixture
def hung() -> Iterator[HungServer]:
    server = HungServer()
    yield server
    server.close()


def quick_client(port: int) -> redis.Redis:
    """What a user should pass: a short socket timeout and no redis-py retries."""
    return redis.Redis(
        port=port, socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0),
        protocol=2, driver_info=DriverInfo(name=None, lib_version=None),  # no handshake
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["hung", "refused"])
def test_calls_after_the_first_failure_do_not_touch_the_network(
    hung: HungServer, kind: str
) -> None:
    """Calls 2..N of an outage apply the policy without a socket wait or a connection."""
    port = hung.port if kind == "hung" else free_port()
    b = SharedBreaker(f"out-{kind}", client=quick_client(port), fail_max=2)
    assert b.call(ok) == "ok"  # the first call meets the outage (a socket timeout if hung)
    contacts = hung.scripts
    for _ in range(5):
        start = time.monotonic()
        assert b.call(ok) == "ok"
        with pytest.raises(Boom):
            b.call(boom)
        # Far below the 0.5 s socket timeout: these calls waited on no socket at all.
        assert time.monotonic() - start < 0.25
    assert hung.scripts == contacts


def test_one_probe_per_breaker_while_redis_is_down(hung: HungServer) -> None:
    """Threads in an outage do not each probe Redis: one probe, the rest apply the policy."""
    clock = VirtualClock()
    b = SharedBreaker("one-probe", client=quick_client(hung.port), fail_max=5)
    clock.attach(b)
    assert b.call(ok) == "ok"  # meets the outage: one script call, one timeout
    assert hung.scripts == 1
    clock.advance(OUTAGE_RETRY)  # a probe is due: exactly one caller makes it
    barrier = threading.Barrier(4)
    results: list[str] = []

    def worker() -> None:
        barrier.wait()
        for _ in range(20):
            results.append(b.call(ok))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == ["ok"] * 80
    assert wait_for(lambda: hung.scripts == 2)  # the one probe
    assert hung.scripts == 2


def test_outage_log_names_the_cause_and_the_recovery(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The outage WARNING names the error class and message; recovery logs INFO."""
    clock = VirtualClock()
    b = SharedBreaker("cause", client=client(private_redis), fail_max=2)
    clock.attach(b)
    b.call(ok)
    private_redis.kill()
    with caplog.at_level(logging.INFO, logger="redisbreaker"):
        clock.advance(1.0)  # the cached view's lease (sync_interval) ends
        b.call(ok)
        private_redis.restart()
        clock.advance(OUTAGE_RETRY)
        b.call(ok)
    messages = [r.getMessage() for r in caplog.records]
    down = [m for m in messages if "unreachable" in m]
    assert len(down) == 1 and "ConnectionError" in down[0] and "Connection refused" in down[0]
    assert any("reachable again" in m for m in messages)


def test_wrong_password_is_an_error_not_an_outage(
    redis_server: RedisServer, r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong password logs ERROR naming AuthenticationError every time it is met."""
    r.acl_setuser("rb-auth", enabled=True, passwords=["+right"], commands=["+@all"], keys=["*"])
    try:
        wrong = redis.Redis(port=redis_server.port, username="rb-auth", password="wrong",
                            retry=Retry(NoBackoff(), 0))  # fmt: skip
        b = SharedBreaker("auth", client=wrong, fail_max=2)
        with caplog.at_level(logging.ERROR, logger="redisbreaker"):
            assert b.call(ok) == "ok"  # fail_open
        errors = [x.getMessage() for x in caplog.records if x.levelno == logging.ERROR]
        # One from the breaker; the pub/sub connection may say the same of itself.
        mine = [m for m in errors if m.startswith("breaker 'auth'")]
        assert len(mine) == 1 and "AuthenticationError" in mine[0]
        assert all("refused the credentials" in m and "unreachable" not in m for m in errors)
        assert b.core.outage_since is None  # no outage window: the next call asks again
    finally:
        r.acl_deluser("rb-auth")


def test_script_errors_are_not_outages_and_show_in_snapshot(
    redis_server: RedisServer, r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A user who may not PUBLISH is refused by every script that could make a
    transition, before it writes anything (Redis 7 checks the ACL up front), so the
    breaker fails clearly from the first call rather than at its first trip: logged at
    ERROR as a permission error naming the command and channel, and counted."""
    r.acl_setuser("rb-nopub", enabled=True, passwords=["+pw"], commands=["+@all", "-publish"],
                  keys=["*"], channels=["*"])  # fmt: skip
    try:
        c = redis.Redis(port=redis_server.port, username="rb-nopub", password="pw")
        b = SharedBreaker("nopub", client=c, fail_max=1)
        with caplog.at_level(logging.ERROR, logger="redisbreaker"):
            assert b.call(ok) == "ok"  # fail_open: the call runs
            fail_n(b.call, 1)  # would trip: refused before writing
        errors = [x.getMessage() for x in caplog.records if x.levelno == logging.ERROR]
        errors = [m for m in errors if m.startswith("breaker 'nopub'")]
        assert len(errors) == 1 and "lacks a permission, not an outage" in errors[0]
        assert "'publish' command on channel rb:cb:events" in errors[0]
        assert "docs/redis.md" in errors[0]
        snap = b.snapshot()
        assert snap.state is State.CLOSED and snap.reason.rule == ""  # nothing written
        assert r.keys("rb:cb*") == []
        assert snap.errors == 2 and snap.last_error is not None
        assert snap.last_error.startswith("NoPermissionError") and "publish" in snap.last_error
        before = script_calls(r)
        fail_n(b.call, 1)  # no outage window: Redis is asked again at once
        assert script_calls(r) > before
    finally:
        r.acl_deluser("rb-nopub")


def test_clients_we_build_do_not_retry_and_wait_for_a_connection(redis_url: str) -> None:
    """configure()'s client: no redis-py retries, a blocking pool, bounded timeouts."""
    redisbreaker.configure(url=redis_url)
    client = redisbreaker.config.default_client()
    assert isinstance(client, redis.Redis)
    assert isinstance(client.connection_pool, redis.BlockingConnectionPool)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["retry"].get_retries() == 0 and kwargs["socket_timeout"] == 2.0
    assert redisbreaker.config.risky_client_settings(client) == []


def test_a_risky_user_client_is_warned_about_once(
    r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """client= with redis-py's default 10 retries, or no socket timeout: one WARNING."""
    port = r.connection_pool.connection_kwargs["port"]
    risky = redis.Redis(port=port, socket_timeout=None)
    with caplog.at_level(logging.WARNING, logger="redisbreaker"):
        for name in ("w1", "w2"):
            SharedBreaker(name, client=risky, fail_max=1).call(ok)
    warned = [x.getMessage() for x in caplog.records if "stalls" in x.getMessage()]
    assert len(warned) == 1
    assert "no socket_timeout" in warned[0] and "10 retries" in warned[0]


def test_a_cluster_with_no_node_up_is_an_outage_from_the_first_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """redis-py's cluster client reaches a node as it is made: with none up, the first
    call of a process follows the outage policy like any later one (no raw
    RedisClusterException), and a fail_closed breaker refuses."""
    redisbreaker.configure(url=f"redis+cluster://127.0.0.1:{free_port()}")
    with caplog.at_level(logging.WARNING, logger="redisbreaker"):
        assert SharedBreaker("down-open").call(ok) == "ok"
    assert any("unreachable" in r.getMessage() for r in caplog.records)
    with pytest.raises(BreakerUnavailableError):
        SharedBreaker("down-closed", on_outage="fail_closed").call(ok)
