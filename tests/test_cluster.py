"""The breaker on a 3-master Redis Cluster: every script works unchanged."""

from __future__ import annotations

import pytest
import redis
from redis.cluster import RedisCluster as ClusterClient
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from redisbreaker import CircuitOpenError, SharedBreaker, State
from redisbreaker.testing import VirtualClock
from redisbreaker.testing.servers import RedisCluster
from tests.helpers import fail_n, ok

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("name", ["payments", "a{b}c", "}{", b"\x00{\xff"])
def test_full_cycle_on_cluster(cc: ClusterClient, name: str | bytes) -> None:
    """Trip, refuse, half-open trial and close, on a cluster, for odd names too."""
    clock = VirtualClock()
    b = SharedBreaker(name, client=cc, fail_max=2, reset_timeout=30)
    clock.attach(b)
    fail_n(b.call, 2)
    with pytest.raises(CircuitOpenError):
        b.call(ok)
    clock.advance(31)
    assert b.call(ok) == "ok"
    assert b.snapshot().state is State.CLOSED


def test_operator_commands_on_cluster(cc: ClusterClient) -> None:
    """force_open / reset work across cluster nodes."""
    b = SharedBreaker("ops", client=cc, fail_max=2)
    b.force_open()
    with pytest.raises(CircuitOpenError):
        b.call(ok)
    assert b.reset().state is State.CLOSED


def test_breakers_spread_over_slots(cc: ClusterClient) -> None:
    """Different breakers land on different nodes, and each one's keys on one slot."""
    slots = set()
    for i in range(20):
        b = SharedBreaker(f"svc-{i}", client=cc, fail_max=1)
        fail_n(b.call, 1)
        key_slots = {key_slot(k.encode()) for k in b.keys}
        assert len(key_slots) == 1
        slots |= key_slots
    assert len(slots) > 1


def test_keys_without_a_shared_tag_are_refused(
    cc: ClusterClient, redis_cluster: RedisCluster
) -> None:
    """Why the hash tag matters: a script over keys in two slots is refused (CROSSSLOT)."""
    script = cc.register_script("return redis.call('EXISTS', KEYS[1], KEYS[2])")
    with pytest.raises(RedisClusterException, match="same key slot"):
        script(keys=["rb:cb:a:s", "rb:cb:b:s"])  # redis-py refuses before sending
    node = redis_cluster.nodes[0].client()
    with pytest.raises(redis.ResponseError, match="same slot"):
        node.eval("return 1", 2, "rb:cb:a:s", "rb:cb:b:s")  # and so does the server


def test_cluster_url_form(redis_cluster: RedisCluster) -> None:
    """A redis+cluster:// URL builds a cluster client through configure()."""
    import redisbreaker

    redisbreaker.configure(url=redis_cluster.url)
    b = SharedBreaker("via-url", fail_max=1)
    fail_n(b.call, 1)
    assert b.snapshot().state is State.OPEN
