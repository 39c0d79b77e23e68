"""Settings read from ``app.conf`` (prefix ``redisbreaker_``), and per-process clients.

Like celery-redbeat, every setting lives in the Celery configuration, so a worker and
the processes that send tasks agree on them without extra wiring. The settings object
is cached on the app; the Redis client is cached per process id, so a prefork child
never reuses a connection it inherited from its parent.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from redisbreaker import config, sentinel
from redisbreaker.errors import ConfigurationError
from redisbreaker.keys import validate_prefix
from redisbreaker.options import OutagePolicy, outage_policy

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


def _flag(conf: Any, key: str) -> bool:
    value = conf.get(key, False)
    if not isinstance(value, bool):
        raise ConfigurationError(f"{key} must be True or False, got {value!r}")
    return value


def _replicas(conf: Any) -> int | None:
    value = conf.get("redisbreaker_commit_replicas")
    if value is None:
        return None
    return config.validate_commit_replicas(value, "redisbreaker_commit_replicas")


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
    """What the Celery integration reads from ``app.conf`` (see docs/celery.md).

    Every part of the integration (breakers, the gate, transactions, handlers, the
    watchdog) finds its Redis here, by one rule, first match wins:

    1. an explicit ``client=`` argument (in the call that takes it);
    2. ``app.conf.redisbreaker_url``;
    3. ``redisbreaker.configure(...)`` or the ``REDISBREAKER_URL`` environment variable;
    4. the broker URL, when the broker is Redis, or Redis Sentinel in kombu's spelling
       (``sentinel://host:port;sentinel://...`` with
       ``broker_transport_options["master_name"]``): the same sentinels and master.

    The key prefix follows the same order: ``redisbreaker_prefix``, then
    ``configure(prefix=...)`` or ``REDISBREAKER_PREFIX``, then ``"rb:"``.
    """

    conf_url: str | None  # app.conf.redisbreaker_url
    broker_url: str | None  # the broker URL as a redis-py URL, when the broker is Redis
    conf_prefix: str | None
    socket_timeout: float
    connect_timeout: float
    on_outage: OutagePolicy | None
    poll_interval: float
    retry_jitter: float
    hostname: str
    visibility_timeout: float | None
    dead_letter: bool = False
    dead_letter_maxlen: int = 10_000
    attempts_ttl: float = 7 * 86_400.0
    commit_replicas: int | None = None  # None: configure() / the environment decides
    # Client options that come with broker_url (a Sentinel broker's passwords and TLS).
    broker_options: dict[str, Any] = field(default_factory=dict, repr=False)
    _clients: dict[int, Any] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __repr__(self) -> str:
        return (
            f"<redisbreaker Settings redis from {self.source()}, prefix={self.prefix!r}, "
            f"on_outage={self.on_outage and self.on_outage.value!r}>"
        )

    @classmethod
    def from_conf(cls, conf: Any) -> Settings:
        url = conf.get("redisbreaker_url")
        if url is not None:
            config.parse_url(url)
        prefix = conf.get("redisbreaker_prefix")
        if prefix is not None:
            validate_prefix(prefix)
        outage = conf.get("redisbreaker_on_outage")
        policy = None if outage is None else outage_policy(outage, "redisbreaker_on_outage")
        hostname = conf.get("redisbreaker_hostname") or socket.gethostname()
        if not isinstance(hostname, str):
            raise ConfigurationError(f"redisbreaker_hostname must be a str, got {hostname!r}")
        options = conf.get("broker_transport_options") or {}
        broker = broker_redis_url(conf.get("broker_url"))
        broker_options: dict[str, Any] = {}
        found = sentinel.from_kombu(conf.get("broker_url"), options, conf.get("broker_use_ssl"))
        if found is not None:  # credentials travel in the options, never in the URL
            broker, broker_options = found.url, found.options
        visibility: float | None = None
        if broker is not None:
            visibility = float(options.get("visibility_timeout", 3600))
        return cls(
            conf_url=url,
            broker_url=broker,
            broker_options=broker_options,
            conf_prefix=prefix,
            socket_timeout=_number(conf, "redisbreaker_socket_timeout", 2.0),
            connect_timeout=_number(conf, "redisbreaker_connect_timeout", 2.0),
            on_outage=policy,
            poll_interval=_number(conf, "redisbreaker_poll_interval", 1.0),
            retry_jitter=_number(conf, "redisbreaker_retry_jitter", 1.0, low=-1e-9),
            hostname=hostname,
            visibility_timeout=visibility,
            dead_letter=_flag(conf, "redisbreaker_dead_letter"),
            dead_letter_maxlen=int(
                _number(conf, "redisbreaker_dead_letter_maxlen", 10_000, low=0.5)
            ),
            attempts_ttl=_number(conf, "redisbreaker_attempts_ttl", 7 * 86_400.0),
            commit_replicas=_replicas(conf),
        )

    @property
    def prefix(self) -> str:
        return self.conf_prefix if self.conf_prefix is not None else config.default_prefix()

    def source(self) -> str:
        """Where this app's Redis comes from, for messages (never the URL itself)."""
        if self.conf_url is not None:
            return "app.conf.redisbreaker_url"
        if config.is_configured():
            return "redisbreaker.configure() / REDISBREAKER_URL"
        if self.broker_url is not None:
            return "the broker URL"
        return "nowhere"

    def client(self) -> Any:
        """This process's Redis client, by the rule above (a new one after fork)."""
        if self.conf_url is None and config.is_configured():
            return config.default_client()
        url = self.conf_url or self.broker_url
        if url is None:
            raise ConfigurationError(
                "redisbreaker: no Redis configured: set app.conf.redisbreaker_url, call "
                "redisbreaker.configure(url=...) or set REDISBREAKER_URL (the broker is not "
                "Redis, nor Sentinel with broker_transport_options['master_name'], so its URL "
                "cannot be reused)"
            )
        pid = os.getpid()
        with self._lock:
            found = self._clients.get(pid)
            if found is None:
                extra = self.broker_options if self.conf_url is None else {}
                found = config.client_from_url(
                    url,
                    **{
                        **extra,
                        "socket_timeout": self.socket_timeout,
                        "socket_connect_timeout": self.connect_timeout,
                    },
                )
                # A client inherited across fork is dropped, never closed: closing
                # would shut sockets the parent still uses.
                self._clients.clear()
                self._clients[pid] = found
            return found


_INSTALLED = "_redisbreaker_installed"


def mark_installed(app: Any) -> bool:
    """Mark ``app`` as set up by ``install``; False if it already was."""
    if getattr(app, _INSTALLED, False):
        return False
    setattr(app, _INSTALLED, True)
    return True


def is_installed(app: Any) -> bool:
    return bool(getattr(app, _INSTALLED, False))


def settings_for(app: Any) -> Settings:
    """The settings of ``app``, read once and cached on it."""
    found: Settings | None = getattr(app, _ATTR, None)
    if found is None:
        found = Settings.from_conf(app.conf)
        setattr(app, _ATTR, found)
    return found
