"""Shared fixtures: real Redis servers started by the suite itself.

A test that needs Redis fails (never skips) when the server cannot be started.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from redis.cluster import RedisCluster as ClusterClient

import redisbreaker.config
from redisbreaker.config import client_from_url
from redisbreaker.testing.servers import (
    RedisCluster,
    RedisSentinel,
    RedisServer,
)
from tests.helpers import healed, started
from tests.support.rabbitmq import RabbitServer, RabbitStartError

# The fixtures users get (redisbreaker_fake, redisbreaker_redis): tested here too.
pytest_plugins = ["redisbreaker.testing.pytest_plugin"]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the session, on a free loopback port and a unix socket."""
    server = started(RedisServer())
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session server, flushed before the test."""
    redis_server.client().flushall()
    return redis_server.url


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the session server, flushed before the test."""
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, for tests that kill or restart it."""
    server = started(RedisServer(appendonly=True))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A 3-master Redis Cluster on loopback ports, started once per session."""
    cluster = started(RedisCluster(masters=3), "a Redis Cluster")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_cluster_ha() -> Iterator[RedisCluster]:
    """A 3-master Redis Cluster with a replica per master, started once per session;
    a master judged failed after 3 s of silence. Tests may kill masters: take it through
    a fixture that calls ``heal()`` (see tests/test_cluster_failover.py)."""
    cluster = started(
        RedisCluster(masters=3, replicas=1, node_timeout_ms=3000), "a Redis Cluster with replicas"
    )
    yield cluster
    cluster.stop()


# The passwords of the Sentinel setup; tests grep output for them.
SENTINEL_MASTER_PW = "m@ster pw/#?"
SENTINEL_PW = "sent?nel&pw%"


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[RedisSentinel]:
    """A Sentinel setup (1 master, 2 replicas, 3 sentinels, quorum 2) for the session,
    with passwords on the data nodes and on the sentinels (URL-hostile characters on
    purpose). Tests may kill its master: take it through ``sentinel_setup`` to heal it."""
    setup = started(
        RedisSentinel(password=SENTINEL_MASTER_PW, sentinel_password=SENTINEL_PW),
        "a Redis Sentinel setup",
    )
    yield setup
    setup.stop()


@pytest.fixture
def sentinel_setup(redis_sentinel: RedisSentinel) -> RedisSentinel:
    """The session's Sentinel setup with every node up (a killed master is back as a
    replica) and the data set empty on every node."""
    return healed(redis_sentinel, "Redis Sentinel setup")


@pytest.fixture(autouse=True)
def _fresh_defaults() -> Iterator[None]:
    """Each test starts with no configured default client."""
    redisbreaker.config.reset()
    yield
    redisbreaker.config.reset()


@pytest.fixture(scope="session")
def rabbit() -> Iterator[RabbitServer]:
    """A private rabbitmq-server for the session; the tests fail if it cannot start."""
    server = RabbitServer()
    try:
        server.start()
    except RabbitStartError as exc:
        pytest.fail(f"could not start rabbitmq-server for the tests: {exc}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def cc(redis_cluster: RedisCluster) -> Iterator[ClusterClient]:
    """A client of the session's Cluster, every master flushed before the test."""
    redis_cluster.flushall()
    client = client_from_url(redis_cluster.url)
    assert isinstance(client, ClusterClient)
    yield client
    client.close()
