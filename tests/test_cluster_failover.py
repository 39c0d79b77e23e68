"""Failover drill on a 3-master/3-replica Redis Cluster (issue 15, item 2).

A breaker is open (shared by two clients), a participant waits on a transaction's
decision, and transactions are decided all along; then the master owning their slots
is SIGKILLed and a replica takes over. Every library call must raise only the
library's errors (or answer by the breaker's policy) during the failover; afterwards
the breaker is still open, the waiter learns the decision voted after the failover,
and every decision that was acknowledged is still there. The seconds of errors are
printed (``-s`` shows them), never asserted: timings belong to the benchmarks.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import redis
from redis.crc import key_slot

from redisbreaker import CircuitOpenError, SharedBreaker, State, Transaction
from redisbreaker.config import client_from_url
from redisbreaker.errors import RedisBreakerError
from redisbreaker.events import hub_for
from redisbreaker.testing.servers import RedisCluster
from redisbreaker.transaction import Decision, Outcome
from tests.helpers import fail_n, healed, ok, wait_for

pytestmark = pytest.mark.cluster


@pytest.fixture
def ha(redis_cluster_ha: RedisCluster) -> RedisCluster:
    """The session's cluster with replicas: every node up, every master empty."""
    return healed(redis_cluster_ha, "Redis Cluster")


@dataclass
class Errors:
    """What calls raised, when: the drill's evidence."""

    seen: list[tuple[float, BaseException]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, exc: BaseException) -> None:
        with self.lock:
            self.seen.append((time.monotonic(), exc))

    def foreign(self) -> list[BaseException]:
        """Errors that are not the library's own (raw redis-py errors, bugs)."""
        return [e for _, e in self.seen if not isinstance(e, RedisBreakerError)]

    def span(self, since: float) -> float:
        """Seconds from ``since`` to the last error (0 if none)."""
        times = [t for t, _ in self.seen if t >= since]
        return max(times) - since if times else 0.0


def _same_master(cluster: RedisCluster, anchor: str, candidates: Iterator[str]) -> str:
    """The first candidate key owned by the master that owns ``anchor``."""
    owner = cluster.master_of(anchor).port
    return next(k for k in candidates if cluster.master_of(k).port == owner)


def _replicate(cluster: RedisCluster, key: str) -> None:
    """Make the master of ``key`` hand every write so far to its replica (WAIT after a
    write of our own in that slot: the replication stream is ordered)."""
    master = cluster.master_of(key)
    tag = key[key.index("{") : key.index("}") + 1]
    with master.client() as client:
        pipe = client.pipeline(transaction=False)
        pipe.set(f"drill:wait{tag}", "1")
        pipe.execute_command("WAIT", 1, 10_000)
        assert pipe.execute()[1] >= 1


def _repeat(stop: threading.Event, errors: Errors, fn: Callable[[], object]) -> threading.Thread:
    def loop() -> None:
        while not stop.is_set():
            try:
                fn()
            except Exception as exc:  # the drill records everything, raw errors included
                errors.add(exc)
                stop.wait(0.02)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def test_failover_keeps_breakers_and_decisions(ha: RedisCluster) -> None:
    """SIGKILL the master of an open breaker and a waited-on transaction: library errors
    only while it fails over; the breaker stays open, the waiter learns the decision
    voted afterwards, and no acknowledged decision is lost."""
    a, b, checker = (client_from_url(ha.url) for _ in range(3))
    name = "drill-breaker"
    opener = SharedBreaker(name, client=a, fail_max=1, reset_timeout=600)
    # fail_closed: while Redis cannot say, this handle refuses (BreakerUnavailableError).
    watcher = SharedBreaker(name, client=b, fail_max=1, reset_timeout=600, on_outage="fail_closed")
    transitions: list[object] = []
    watcher.subscribe(transitions.append)
    watcher.call(ok)  # caches "closed" and joins b's hub
    assert wait_for(lambda: hub_for(b).connected.is_set(), 30)
    fail_n(opener.call, 1)
    assert wait_for(lambda: len(transitions) == 1, 30)  # the event crossed the cluster
    assert watcher.snapshot().state is State.OPEN

    # A transaction on the same master as the breaker; its participant 0 waits.
    tx_id = _same_master(ha, opener.keys[0], (f"drill-tx-{i}" for i in range(10_000)))
    tx = Transaction.begin(2, timeout=300, tx_id=tx_id, client=a)
    waited: list[Decision | BaseException] = []

    def wait() -> None:
        try:
            waited.append(Transaction(tx_id, client=b).vote_and_wait(0, True))
        except BaseException as exc:
            waited.append(exc)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    assert wait_for(lambda: tx.tally().yes == 1, 30)
    assert wait_for(lambda: hub_for(b).ready(Transaction(tx_id, client=b).channel).is_set(), 30)

    # Transactions decided all along, on every master; each acknowledged one is kept.
    errors = Errors()
    decided: dict[str, Outcome] = {}
    running = threading.Event()  # cleared: the decider pauses (while we WAIT and kill)
    paused = threading.Event()
    stop = threading.Event()

    def decide() -> None:
        while not stop.is_set():
            if not running.is_set():
                paused.set()
                running.wait(0.05)
                continue
            paused.clear()
            try:
                t = Transaction.begin(1, timeout=5, client=a, grace=2)
                decided[t.id] = t.vote(0, True).outcome
            except Exception as exc:
                errors.add(exc)
                stop.wait(0.02)

    decider = threading.Thread(target=decide, daemon=True)
    running.set()
    decider.start()
    assert wait_for(lambda: len(decided) >= 50, 60)

    # Calls are refused throughout: by the cached view, or by the outage policy.
    refused: list[BaseException] = []

    def call_open_breaker() -> None:
        try:
            watcher.call(ok)
        except CircuitOpenError as exc:  # BreakerUnavailableError included
            refused.append(exc)
            time.sleep(0.01)
            return
        raise AssertionError("the open breaker let a call through")

    snapshots = Errors()
    callers = Errors()
    callers_stop = threading.Event()
    caller = _repeat(callers_stop, callers, call_open_breaker)

    running.clear()
    assert paused.wait(30)
    _replicate(ha, opener.keys[0])
    killed_at = time.monotonic()
    running.set()
    promoted = threading.Thread(target=ha.kill_master_of, args=(opener.keys[0],), daemon=True)
    promoted.start()
    first_ok = None
    while first_ok is None:
        try:
            state = watcher.snapshot().state
        except Exception as exc:
            snapshots.add(exc)
            time.sleep(0.05)
            continue
        if snapshots.seen:  # answered again after the failover
            first_ok = time.monotonic()
            assert state is State.OPEN
        else:
            time.sleep(0.05)
        assert time.monotonic() - killed_at < 120, "no answer 120 s after the kill"
    promoted.join(120)
    assert not promoted.is_alive()

    # The failover is over: the decision is voted now, and the waiter learns it.
    assert tx.vote(1, True).outcome is Outcome.COMMIT
    waiter.join(60)
    assert len(waited) == 1 and isinstance(waited[0], Decision), waited
    assert waited[0].outcome is Outcome.COMMIT

    before = len(decided)
    assert wait_for(lambda: len(decided) >= before + 50, 60)  # deciding goes on
    stop.set()
    callers_stop.set()
    decider.join(60)
    caller.join(60)

    assert opener.snapshot().state is State.OPEN
    with pytest.raises(CircuitOpenError):
        opener.call(ok)
    for tx_id_, outcome in decided.items():  # 0 lost decisions
        assert Transaction(tx_id_, client=checker).status().outcome is outcome
    for errs in (errors, snapshots, callers):
        assert errs.foreign() == []
    assert refused  # the open breaker kept refusing

    kinds = sorted({type(e).__name__ for e in errs_all(errors, snapshots, callers)})
    print(
        f"\ncluster failover drill: snapshot errors for {snapshots.span(killed_at):.1f}s "
        f"after the kill ({len(snapshots.seen)} failed snapshots), transactions errors for "
        f"{errors.span(killed_at):.1f}s ({len(errors.seen)} failed), {len(decided)} "
        f"decisions acknowledged and all kept; errors raised: {', '.join(kinds) or 'none'}"
    )
    for client in (a, b, checker):
        client.close()


def errs_all(*groups: Errors) -> list[BaseException]:
    return [e for g in groups for _, e in g.seen]


def test_replica_promotion_is_followed_by_pub_sub(ha: RedisCluster) -> None:
    """After a failover the hub subscribes on the promoted replica: an event published
    there reaches a listener in another process's client."""
    a, b = client_from_url(ha.url), client_from_url(ha.url)
    actor = SharedBreaker("follow", client=a, fail_max=1)
    listener = SharedBreaker("follow", client=b, fail_max=1)
    seen: list[object] = []
    listener.subscribe(seen.append)
    listener.call(ok)
    channel = listener.core.channel
    assert wait_for(lambda: hub_for(b).ready(channel).is_set(), 30)
    _replicate(ha, listener.keys[0])
    promoted = ha.kill_master_of(listener.keys[0])
    # The positive signal: the hub holds the channel again, on the promoted master.
    assert wait_for(lambda: hub_for(b).ready(channel).is_set(), 60)
    with promoted.client() as node:
        assert wait_for(lambda: _shard_subscribers(node, channel) == 1, 60)
    fail_n(actor.call, 1)
    assert wait_for(lambda: len(seen) == 1, 30)
    assert key_slot(channel.encode()) == key_slot(listener.keys[0].encode())
    for client in (a, b):
        client.close()


def _shard_subscribers(node: redis.Redis, channel: str) -> int:
    return int(node.pubsub_shardnumsub(channel)[0][1])


def test_asyncio_waiter_and_breaker_carry_on_through_a_failover(ha: RedisCluster) -> None:
    """The asyncio twins on an asyncio Cluster client: library errors only during the
    failover, then the waiter learns the decision voted after it."""
    import redisbreaker.aio as aio
    from redisbreaker.config import async_client_from_url
    from redisbreaker.events import async_hub_for

    sync = client_from_url(ha.url)
    tx = Transaction.begin(2, timeout=300, client=sync)
    errors = Errors()

    async def drill() -> Decision:
        client = async_client_from_url(ha.url)
        try:
            name = _same_master(ha, tx.key, (f"aio-drill-{i}" for i in range(10_000)))
            breaker = aio.SharedBreaker(name, client=client, fail_max=1)
            await breaker.snapshot()
            waiting = asyncio.create_task(
                aio.Transaction(tx.id, client=client).vote_and_wait(0, True)
            )
            hub = async_hub_for(client)
            channel = aio.Transaction(tx.id, client=client).channel
            while not (hub.ready(channel).is_set() and tx.tally().yes == 1):
                await asyncio.sleep(0.02)
            _replicate(ha, tx.key)
            kill = asyncio.create_task(asyncio.to_thread(ha.kill_master_of, tx.key))
            deadline = time.monotonic() + 120
            answered_after_failover = False
            while not answered_after_failover:
                assert time.monotonic() < deadline, "no answer 120 s after the kill"
                promoted = kill.done()
                try:
                    await breaker.snapshot()
                    answered_after_failover = promoted
                except Exception as exc:
                    errors.add(exc)
                await asyncio.sleep(0.05)
            await kill
            assert tx.vote(1, True).outcome is Outcome.COMMIT
            return await asyncio.wait_for(waiting, 60)
        finally:
            await client.aclose()

    decision = asyncio.run(drill())
    assert decision.outcome is Outcome.COMMIT
    assert errors.foreign() == []
    assert errors.seen  # its master was killed: it could not always answer
    print(f"\nasyncio cluster failover: snapshot errors for {errors.span(errors.seen[0][0]):.1f}s")
    sync.close()
