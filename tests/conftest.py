"""Shared fixtures: real Redis servers started by the suite itself.

A test that needs Redis fails (never skips) when the server cannot be started.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

import redisbreaker.config
from redisbreaker.testing.servers import RedisCluster, RedisServer, ServerStartError
from tests.support.rabbitmq import RabbitServer, RabbitStartError

# The fixtures users get (redisbreaker_fake, redisbreaker_redis): tested here too.
pytest_plugins = ["redisbreaker.testing.pytest_plugin"]


def _start(server: RedisServer) -> RedisServer:
    try:
        return server.start()
    except ServerStartError as exc:
        pytest.fail(f"could not start redis-server for the tests: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the session, on a free loopback port and a unix socket."""
    server = _start(RedisServer())
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
    server = _start(RedisServer(appendonly=True))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A 3-master Redis Cluster on loopback ports, started once per session."""
    try:
        cluster = RedisCluster(masters=3).start()
    except ServerStartError as exc:
        pytest.fail(f"could not start a Redis Cluster for the tests: {exc}", pytrace=False)
    yield cluster
    cluster.stop()


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
