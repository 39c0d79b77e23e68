"""``commit_replicas``: a COMMIT is handed over only once replicas have it.

Redis replicates asynchronously. A master that decides COMMIT and dies before a
replica has it takes the decision along; the promoted replica still has the
transaction pending and its deadline rolls it back, while whoever heard the commit
from the dead master has committed: the participants split. With ``commit_replicas``
every call that would hand over a commit first writes after it and sends ``WAIT`` on
the same connection, so it returns the commit only once that many replicas have it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

import redisbreaker
from redisbreaker import Transaction
from redisbreaker.aio.transaction import Transaction as AioTransaction
from redisbreaker.config import async_client_from_url, client_from_url
from redisbreaker.errors import ConfigurationError, TransactionUnavailableError
from redisbreaker.testing.servers import RedisCluster, RedisSentinel, RedisServer
from redisbreaker.tx_core import Decision, Outcome
from tests.helpers import healed, started, wait_for


@pytest.fixture
def pair() -> Iterator[tuple[RedisServer, RedisServer]]:
    """A master and one replica."""
    master = started(RedisServer())
    replica = started(RedisServer(extra=["--replicaof", "127.0.0.1", str(master.port)]))
    with master.client() as c:
        assert wait_for(lambda: c.info("replication")["connected_slaves"] == 1, 30)
    yield master, replica
    for server in (replica, master):
        _resume(server)
        server.stop()


def _stop(server: RedisServer) -> None:
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)


def _resume(server: RedisServer) -> None:
    if server.process is not None and server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGCONT)


def _waits(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))


class Background:
    """A call run in a thread: its result or its exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except BaseException as exc:
            self.error = exc

    def join(self, timeout: float = 60.0) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive()

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()


def test_a_commit_waits_for_its_replica(pair: tuple[RedisServer, RedisServer]) -> None:
    """With the replica stopped, the deciding vote and the waiter keep confirming and
    hand nothing over; once it runs again, both get COMMIT."""
    master, replica = pair
    client = master.client()
    tx = Transaction.begin(2, timeout=60, client=client, commit_replicas=1)
    _stop(replica)
    waiter = Background(
        lambda: Transaction(tx.id, client=client, commit_replicas=1).vote_and_wait("a", True)
    )
    assert wait_for(lambda: client.hget(tx.key, "v:a") == b"1", 30)
    voter = Background(lambda: Transaction(tx.id, client=client, commit_replicas=1).vote("b", True))
    before = _waits(client)
    # The positive signal that both are confirming: WAITs sent after the decision.
    assert wait_for(lambda: client.hget(tx.key, "outcome") == b"commit", 30)
    assert wait_for(lambda: _waits(client) >= before + 4, 30)
    assert not waiter.done and not voter.done  # nothing handed over meanwhile
    _resume(replica)
    waiter.join()
    voter.join()
    assert waiter.error is None and voter.error is None, (waiter.error, voter.error)
    assert waiter.result.outcome is Outcome.COMMIT and voter.result.outcome is Outcome.COMMIT
    with replica.client() as r:
        assert r.hget(tx.key, "outcome") == b"commit"


def test_without_replicas_a_commit_is_not_handed_over(r: redis.Redis) -> None:
    """No replica can confirm it: the call gives up after its budget, as unavailable."""
    tx = Transaction.begin(1, timeout=1, client=r, commit_replicas=1, grace=1)
    with pytest.raises(TransactionUnavailableError, match="fewer than the 1 replica"):
        tx.vote("only", True)
    assert Transaction(tx.id, client=r).status().outcome is Outcome.COMMIT  # it stands


def test_rollbacks_and_the_default_need_no_replica(r: redis.Redis) -> None:
    """Only a commit waits: acting on a rollback Redis then loses still ends in
    rollback. And commit_replicas defaults to 0: no WAIT at all."""
    tx = Transaction.begin(2, timeout=30, client=r, commit_replicas=3)
    assert tx.vote("a", False, reason="no").outcome is Outcome.ROLLBACK
    before = _waits(r)
    plain = Transaction.begin(1, timeout=30, client=r)
    assert plain.commit_replicas == 0
    assert plain.vote("x", True).outcome is Outcome.COMMIT
    assert _waits(r) == before


def test_the_setting_is_validated_and_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="commit_replicas"):
        Transaction("t", commit_replicas=-1)
    with pytest.raises(ConfigurationError, match="commit_replicas"):
        redisbreaker.configure(commit_replicas=True)
    redisbreaker.configure(commit_replicas=2)
    assert Transaction("t").commit_replicas == 2
    redisbreaker.config.reset()
    monkeypatch.setenv("REDISBREAKER_COMMIT_REPLICAS", "1")
    assert Transaction("t").commit_replicas == 1
    monkeypatch.setenv("REDISBREAKER_COMMIT_REPLICAS", "many")
    with pytest.raises(ConfigurationError, match="REDISBREAKER_COMMIT_REPLICAS"):
        Transaction("t")


def test_asyncio_commit_waits_for_its_replica(pair: tuple[RedisServer, RedisServer]) -> None:
    """The asyncio twin: blocked while the replica is stopped, COMMIT once it runs."""
    master, replica = pair

    async def main() -> Decision:
        client = async_client_from_url(master.url)
        tx = await AioTransaction.begin(1, timeout=60, client=client, commit_replicas=1)
        _stop(replica)
        with master.client() as m:
            m.client_kill_filter(_type="replica")
        vote = asyncio.create_task(tx.vote("a", True))
        with master.client() as m:
            while _waits(m) < 2:  # confirming, and not handed over meanwhile
                assert not vote.done()
                await asyncio.sleep(0.05)
        _resume(replica)
        return await asyncio.wait_for(vote, 60)

    assert asyncio.run(main()).outcome is Outcome.COMMIT


@pytest.mark.cluster
def test_on_a_cluster_the_key_master_confirms(redis_cluster_ha: RedisCluster) -> None:
    """On Redis Cluster the WAIT goes to the master of the transaction's slot, from
    the sync and the asyncio client alike."""
    cluster = healed(redis_cluster_ha, "Redis Cluster")
    sync_tx = Transaction.begin(1, timeout=30, client=client_from_url(cluster.url),
                                commit_replicas=1)  # fmt: skip
    assert sync_tx.vote("a", True).outcome is Outcome.COMMIT

    async def main() -> Decision:
        client = async_client_from_url(cluster.url)
        tx = await AioTransaction.begin(1, timeout=30, client=client, commit_replicas=1)
        return await tx.vote("a", True)

    assert asyncio.run(main()).outcome is Outcome.COMMIT
    waits = 0
    for node in cluster.nodes:
        with node.client() as c:
            waits += _waits(c)
    assert waits >= 2


@pytest.mark.sentinel
@pytest.mark.timeout(180)
def test_a_commit_the_failover_lost_splits_no_one(sentinel_setup: RedisSentinel) -> None:
    """The drill. Both replicas are stopped, the deciding vote commits on the master,
    the master dies before any replica has the decision, a replica is promoted. A
    handle without commit_replicas read COMMIT from the master (what a participant
    would have acted on: the split). The two with commit_replicas=1 handed nothing
    over and report the commit lost; after the deadline everyone agrees: ROLLBACK."""
    setup = sentinel_setup
    url = setup.url
    tx = Transaction.begin(2, timeout=20, client=client_from_url(url), commit_replicas=1)
    with setup.client(setup.master()) as m:
        assert m.wait(setup.replicas, 10_000) == setup.replicas  # the tally is replicated
    replicas = [n for n in setup.nodes if n.port != setup.master_port()]
    for node in replicas:
        _stop(node)
    with setup.client(setup.master()) as m:
        # Cut the links too: a stopped replica's socket would still buffer the stream.
        m.client_kill_filter(_type="replica")
    try:

        def safe(call: str) -> Callable[[], Decision]:
            handle = Transaction(tx.id, client=client_from_url(url), commit_replicas=1)
            if call == "wait":
                return lambda: handle.vote_and_wait("a", True)
            return lambda: handle.vote("b", True)

        master = setup.master()
        with setup.client(master) as m:
            waiter = Background(safe("wait"))
            assert wait_for(lambda: m.hget(tx.key, "v:a") == b"1", 30)
            voter = Background(safe("vote"))  # the deciding vote
            assert wait_for(lambda: m.hget(tx.key, "outcome") == b"commit", 30)
            unsafe = Transaction(tx.id, client=client_from_url(url)).status()
            assert unsafe.outcome is Outcome.COMMIT  # heard from the master alone
            assert wait_for(lambda: _waits(m) >= 2, 30)  # both are confirming
        assert not waiter.done and not voter.done
        master.kill()
    finally:
        for node in replicas:
            _resume(node)
    setup.wait_promoted(master.port)
    waiter.join()
    voter.join()
    for call in (waiter, voter):
        assert isinstance(call.error, TransactionUnavailableError), (call.error, call.result)
        assert "no longer in Redis" in str(call.error)
    assert Transaction(tx.id, client=client_from_url(url)).wait().outcome is Outcome.ROLLBACK


def test_the_celery_setting(redis_url: str) -> None:
    """app.conf.redisbreaker_commit_replicas reaches every handle the integration makes."""
    from celery import Celery

    from redisbreaker.celery.settings import Settings
    from redisbreaker.celery.transactions import transaction

    app = Celery(set_as_current=False)
    app.conf.update(redisbreaker_url=redis_url, redisbreaker_commit_replicas=2)
    assert transaction("t", app=app).commit_replicas == 2
    app.conf.redisbreaker_commit_replicas = "two"
    with pytest.raises(ConfigurationError, match="redisbreaker_commit_replicas"):
        Settings.from_conf(app.conf)
