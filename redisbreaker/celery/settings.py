"""Settings read from ``app.conf`` (prefix ``redisbreaker_``), and per-process clients.

Like celery-redbeat, every setting lives in the Celery configuration, so a worker and
the processes that send tasks agree on them without extra wiring. The settings object
is cached on the app; the Redis client is cached per process id, so a prefork child
never reuses a connection it inherited from its parent.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from redisbreaker import config
from redisbreaker.errors import ConfigurationError
from redisbreaker.keys import DEFAULT_PREFIX, validate_prefix
from redisbreaker.options import OutagePolicy

logger = logging.getLogger("redisbreaker.celery")

_ATTR = "_redisbreaker_settings"

# kombu spells a Redis unix socket "redis+socket:///path"; redis-py wants "unix:///path".
_BROKER_SCHEMES = {
    "redis": "redis",
    "rediss": "rediss",
    "redis+socket": "unix",
    "socket": "unix",
    "unix": "unix",
}


def _number(conf: Any, key: str, default: float, *, low: float = 0.0) -> float:
    value = conf.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > low:
        raise ConfigurationError(f"{key} must be a number above {low}, got {value!r}")
    return float(value)


def broker_redis_url(broker_url: object) -> str | None:
    """The broker URL as a redis-py URL when the broker is Redis, else ``None``."""
    if not isinstance(broker_url, str) or "://" not in broker_url:
        return None
    # kombu accepts "url1;url2" for failover: the first one is the primary.
    first = broker_url.split(";")[0].strip()
    scheme, rest = first.split("://", 1)
    mapped = _BROKER_SCHEMES.get(scheme.lower())
    return f"{mapped}://{rest}" if mapped else None


@dataclass
class Settings:
    """What the Celery integration reads from ``app.conf``; see docs/celery.md."""

    url: str | None
    prefix: str
    socket_timeout: float
    connect_timeout: float
    on_outage: OutagePolicy | None
    poll_interval: float
    retry_jitter: float
    hostname: str
    visibility_timeout: float | None
    _clients: dict[int, Any] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_conf(cls, conf: Any) -> Settings:
        url = conf.get("redisbreaker_url")
        if url is not None:
            config.parse_url(url)
        else:
            url = broker_redis_url(conf.get("broker_url"))
        prefix = validate_prefix(conf.get("redisbreaker_prefix") or DEFAULT_PREFIX)
        outage = conf.get("redisbreaker_on_outage")
        policy = None
        if outage is not None:
            try:
                policy = OutagePolicy(outage)
            except ValueError:
                choices = [p.value for p in OutagePolicy]
                raise ConfigurationError(
                    f"redisbreaker_on_outage must be one of {choices}, got {outage!r}"
                ) from None
        hostname = conf.get("redisbreaker_hostname") or socket.gethostname()
        if not isinstance(hostname, str):
            raise ConfigurationError(f"redisbreaker_hostname must be a str, got {hostname!r}")
        visibility: float | None = None
        if broker_redis_url(conf.get("broker_url")) is not None:
            options = conf.get("broker_transport_options") or {}
            visibility = float(options.get("visibility_timeout", 3600))
        return cls(
            url=url,
            prefix=prefix,
            socket_timeout=_number(conf, "redisbreaker_socket_timeout", 2.0),
            connect_timeout=_number(conf, "redisbreaker_connect_timeout", 2.0),
            on_outage=policy,
            poll_interval=_number(conf, "redisbreaker_poll_interval", 1.0),
            retry_jitter=_number(conf, "redisbreaker_retry_jitter", 1.0, low=-1e-9),
            hostname=hostname,
            visibility_timeout=visibility,
        )

    def client(self) -> Any:
        """This process's Redis client for breakers (a new one after fork)."""
        pid = os.getpid()
        with self._lock:
            found = self._clients.get(pid)
            if found is None:
                if self.url is None:
                    raise ConfigurationError(
                        "redisbreaker: no Redis URL: set app.conf.redisbreaker_url "
                        "(the broker is not Redis, so its URL cannot be reused)"
                    )
                found = config.client_from_url(
                    self.url,
                    socket_timeout=self.socket_timeout,
                    socket_connect_timeout=self.connect_timeout,
                )
                # A client inherited across fork is dropped, never closed: closing
                # would shut sockets the parent still uses.
                self._clients.clear()
                self._clients[pid] = found
            return found

    def forget_clients(self) -> None:
        with self._lock:
            self._clients.clear()


def settings_for(app: Any) -> Settings:
    """The settings of ``app``, read once and cached on it."""
    found: Settings | None = getattr(app, _ATTR, None)
    if found is None:
        found = Settings.from_conf(app.conf)
        setattr(app, _ATTR, found)
    return found


def check_eviction(client: Any) -> str | None:
    """A warning if Redis may evict breaker keys (they carry TTLs, so only
    ``noeviction`` is safe); ``None`` if it is safe or cannot be told."""
    try:
        reply = client.config_get("maxmemory-policy")
    except Exception as exc:  # managed Redis often disables CONFIG: say so at debug level
        logger.debug("redisbreaker: cannot read maxmemory-policy: %r", exc)
        return None
    policy = reply.get("maxmemory-policy") if isinstance(reply, dict) else None
    if isinstance(policy, bytes):
        policy = policy.decode()
    if policy and policy != "noeviction":
        return (
            f"redisbreaker: Redis maxmemory-policy is {policy!r}: under memory pressure it "
            "may evict breaker keys, which silently closes open breakers and ends pauses. "
            "Use 'noeviction' (or a Redis of its own) for redisbreaker_url."
        )
    return None
