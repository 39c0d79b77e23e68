"""Connecting: the default client, URL parsing, and keeping credentials out of messages.

``configure(url=...)`` or the ``REDISBREAKER_URL`` environment variable sets the
client that every object uses unless it is given ``client=``. Accepted URLs:

* ``redis://[user:password@]host[:port][/db]`` and ``rediss://`` (TLS);
* ``unix://[user:password@]/path/to/redis.sock[?db=N]``;
* ``redis+cluster://host:port[,host:port...]`` and ``rediss+cluster://`` for Redis
  Cluster (any reachable node; the rest are discovered), or pass a ``RedisCluster``;
* ``redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]`` and
  ``rediss+sentinel://`` for Redis Sentinel: the sentinels to ask for the master of
  ``service_name``; the credentials are the master's, the sentinels' own go in
  ``?sentinel_password=`` (see :mod:`redisbreaker.sentinel`);
* ``fakeredis://[name]`` for tests: an in-memory fakeredis server (``fakeredis[lua]``,
  the ``testing`` extra), one per name and process, shared by every client of that URL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import weakref
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import SplitResult, urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.backoff import NoBackoff as AsyncNoBackoff
from redis.retry import Retry

from redisbreaker import sentinel
from redisbreaker.errors import ConfigurationError
from redisbreaker.keys import DEFAULT_PREFIX, validate_prefix
from redisbreaker.sentinel import SentinelUrl

logger = logging.getLogger("redisbreaker")

ENV_URL = "REDISBREAKER_URL"
ENV_PREFIX = "REDISBREAKER_PREFIX"
ENV_COMMIT_REPLICAS = "REDISBREAKER_COMMIT_REPLICAS"

_SCHEMES = (
    "redis", "rediss", "unix", "redis+cluster", "rediss+cluster", *sentinel.SCHEMES, "fakeredis",
)  # fmt: skip

SyncClient = redis.Redis | redis.cluster.RedisCluster
AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster


def redact_url(url: object) -> str:
    """``url`` with its credentials replaced by ``***``: safe to log or show.

    Works on the raw text rather than a parsed URL, because the URLs that most need it
    do not parse as meant: a password holding an unencoded ``/``, ``#``, ``?`` or ``@``
    moves the split points. So everything between ``://`` and the last ``@`` goes
    (user name too), and so does the value of every ``password=`` query parameter
    (``sentinel_password=`` included). kombu's ``url1;url2`` lists are redacted item
    by item. Over-redacting a path that holds an ``@`` is the price of never showing
    a password.
    """
    if not isinstance(url, str):
        return "<not a URL>"
    items = _URL_LIST.split(url)
    return ";".join(_redact_one(item) for item in items)


# A ';' followed by a scheme starts the next URL of a kombu failover list.
_URL_LIST = re.compile(r";(?=[A-Za-z][A-Za-z0-9+.-]*://)")
# A password= value runs to the next "&name=" (an unencoded & may be part of it).
_QUERY_SECRET = re.compile(r"(?i)(password=).*?(?=&[A-Za-z_]+=|$)")


def _redact_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<unparsable url>" if "@" in url or ":" in url else url
    rest = _QUERY_SECRET.sub(r"\1***", rest)  # first: such a password may hold an '@'
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return scheme + sep + rest


@dataclass(frozen=True, slots=True)
class ParsedUrl:
    scheme: str
    url: str  # the URL as redis-py expects it (cluster marker removed)
    cluster_nodes: tuple[tuple[str, int], ...]
    sentinel: SentinelUrl | None = None  # set for redis+sentinel:// URLs

    @property
    def is_cluster(self) -> bool:
        return bool(self.cluster_nodes)


def parse_url(url: object) -> ParsedUrl:
    """Validate ``url``; errors name the URL with its credentials redacted."""
    if not isinstance(url, str) or not url:
        raise ConfigurationError(f"Redis URL must be a non-empty str, got {type(url).__name__}")
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
    except ValueError:
        # urllib's message quotes the host part, credentials included: not shown.
        raise ConfigurationError(
            f"Redis URL {shown!r} cannot be parsed (is a [ or ] in it percent-encoded?)"
        ) from None
    if "@" in url.partition("://")[2] and "@" not in parts.netloc:
        # An unencoded / # or ? in the password ends the host part early, and the rest
        # of the password would be read as a path, a query or a fragment.
        raise ConfigurationError(
            f"Redis URL {shown!r} has an '@' after its host part: percent-encode a user "
            "name or password holding / # ? or @ (urllib.parse.quote(password, safe=''))"
        )
    if parts.scheme not in _SCHEMES:
        raise ConfigurationError(
            f"Redis URL {shown!r} has scheme {parts.scheme!r}; expected one of {_SCHEMES}"
        )
    if parts.scheme == "fakeredis":
        return ParsedUrl("fakeredis", url, ())
    if parts.scheme == "unix":
        if not parts.path:
            raise ConfigurationError(f"Redis URL {shown!r} names no socket path")
        return ParsedUrl("unix", url, ())
    if parts.scheme.endswith("+cluster"):
        return ParsedUrl(parts.scheme, url, _cluster_nodes(parts, shown))
    if parts.scheme in sentinel.SCHEMES:
        return ParsedUrl(parts.scheme, url, (), sentinel.parse(parts, shown))
    if not parts.hostname:
        raise ConfigurationError(f"Redis URL {shown!r} names no host")
    _check_port(parts, shown)
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise ConfigurationError(f"Redis URL {shown!r} has database {db!r}; expected a number")
    return ParsedUrl(parts.scheme, url, ())


def _check_port(parts: SplitResult, shown: str) -> None:
    try:
        parts.port  # noqa: B018 - the property validates the port
    except ValueError:
        raise ConfigurationError(f"Redis URL {shown!r} has an invalid port") from None


def _cluster_nodes(parts: SplitResult, shown: str) -> tuple[tuple[str, int], ...]:
    hosts = parts.netloc.rpartition("@")[2]
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(
                f"Redis Cluster URL {shown!r} has node {item!r}; expected host:port"
            )
        nodes.append((host.strip("[]"), int(port)))
    return tuple(nodes)


def _credentials(parts: SplitResult) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if parts.username:
        out["username"] = parts.username
    if parts.password:
        out["password"] = parts.password
    return out


def client_from_url(url: str, **options: Any) -> SyncClient:
    """A redis-py client for ``url`` (``redis.Redis`` or ``redis.cluster.RedisCluster``),
    with the library's defaults (2 s timeouts, no retries inside redis-py, a blocking
    pool); ``options`` override them."""
    parsed = parse_url(url)
    if parsed.scheme == "fakeredis":
        fake = _fakeredis()
        return cast(SyncClient, fake.FakeRedis(server=_fake_server(url)))
    if parsed.sentinel is not None:  # no retries: see redisbreaker.sentinel
        return sentinel.client(parsed.sentinel, {**POOL_DEFAULTS, **CLIENT_DEFAULTS, **options})
    if parsed.is_cluster:
        parts = urlsplit(url)
        # redis-py leaves ClusterNode.__init__ unannotated.
        nodes = [
            redis.cluster.ClusterNode(h, p)  # type: ignore[no-untyped-call]
            for h, p in parsed.cluster_nodes
        ]
        return redis.cluster.RedisCluster(
            startup_nodes=nodes,
            ssl=parsed.scheme.startswith("rediss"),
            **_credentials(parts),
            **{**CLIENT_DEFAULTS, **options},
        )
    options = {**CLIENT_DEFAULTS, **options}
    options.setdefault("retry", Retry(NoBackoff(), 0))
    pool = redis.BlockingConnectionPool.from_url(url, **{**POOL_DEFAULTS, **options})
    return redis.Redis(connection_pool=pool)


def async_client_from_url(url: str, **options: Any) -> AsyncClient:
    """The asyncio twin of :func:`client_from_url`."""
    parsed = parse_url(url)
    if parsed.scheme == "fakeredis":
        fake = _fakeredis()
        return cast(AsyncClient, fake.FakeAsyncRedis(server=_fake_server(url)))
    if parsed.sentinel is not None:
        return sentinel.async_client(
            parsed.sentinel, {**POOL_DEFAULTS, **CLIENT_DEFAULTS, **options}
        )
    if parsed.is_cluster:
        parts = urlsplit(url)
        nodes = [redis.asyncio.cluster.ClusterNode(h, p) for h, p in parsed.cluster_nodes]
        return redis.asyncio.cluster.RedisCluster(
            startup_nodes=nodes,
            ssl=parsed.scheme.startswith("rediss"),
            **_credentials(parts),
            **{**CLIENT_DEFAULTS, **options},
        )
    options = {**CLIENT_DEFAULTS, **options}
    options.setdefault("retry", AsyncRetry(AsyncNoBackoff(), 0))
    pool = redis.asyncio.BlockingConnectionPool.from_url(url, **{**POOL_DEFAULTS, **options})
    return redis.asyncio.Redis(connection_pool=pool)


_fake_servers: dict[str, Any] = {}
_fake_lock = threading.Lock()


def _fakeredis() -> Any:
    try:
        import fakeredis
    except ImportError:
        raise ConfigurationError(
            "fakeredis:// URLs need fakeredis with Lua: pip install 'redisbreaker[testing]'"
        ) from None
    return fakeredis


def _fake_server(url: str) -> Any:
    """The process's fakeredis server for ``url`` (one per name, made on first use)."""
    with _fake_lock:
        server = _fake_servers.get(url)
        if server is None:
            server = _fake_servers[url] = _fakeredis().FakeServer()
        return server


# Every client we build gets bounded timeouts, so an unreachable Redis turns into an
# error the outage policy can handle instead of a hung worker.
CLIENT_DEFAULTS: dict[str, Any] = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}

# A standalone client we build waits for a free connection (up to ``timeout`` seconds)
# instead of raising MaxConnectionsError when many threads share it, and never retries
# inside redis-py: a retry multiplies the stall of an outage, and the library retries by
# itself where a command is idempotent. A cluster client keeps redis-py's own retries,
# which are how it follows a failover to a promoted replica; a Sentinel client needs
# none, as each new connection asks the sentinels for the master (sentinel.py).
POOL_DEFAULTS: dict[str, Any] = {"max_connections": 100, "timeout": 10.0}


class _Defaults:
    """The process-wide default client, created lazily and safe to use after fork."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.url: str | None = None
        self.prefix: str = DEFAULT_PREFIX
        self.client: SyncClient | None = None
        self.options: dict[str, Any] = {}
        self.commit_replicas: int | None = None

    def __repr__(self) -> str:
        shown = redact_url(self.url) if self.url else None
        return f"<redisbreaker defaults url={shown!r} prefix={self.prefix!r}>"


_defaults = _Defaults()


def configure(
    url: str | None = None,
    *,
    client: SyncClient | None = None,
    prefix: str | None = None,
    commit_replicas: int | None = None,
    **client_options: Any,
) -> None:
    """Set the default Redis client and key prefix used when ``client=`` is not given,
    and ``commit_replicas`` for transactions (how many replicas must have a COMMIT
    before it is handed over; see docs/redis.md).

    Validates eagerly: a bad URL or prefix raises :class:`ConfigurationError` here,
    not at first use. No connection is made.
    """
    if url is not None and client is not None:
        raise ConfigurationError("configure() takes url= or client=, not both")
    if url is not None:
        parse_url(url)
    if commit_replicas is not None:
        _defaults.commit_replicas = validate_commit_replicas(commit_replicas)
    new_prefix = validate_prefix(prefix) if prefix is not None else None
    with _defaults.lock:
        if url is not None or client is not None:
            _defaults.url = url
            _defaults.client = client
            _defaults.options = dict(client_options)
            _async_clients.clear()
        if new_prefix is not None:
            _defaults.prefix = new_prefix


def default_url() -> str:
    url = _defaults.url or os.environ.get(ENV_URL)
    if not url:
        raise ConfigurationError(
            f"no Redis configured: call redisbreaker.configure(url=...), set {ENV_URL}, "
            "or pass client="
        )
    return url


def default_client() -> SyncClient:
    """The configured client, built on first use from the URL or ``REDISBREAKER_URL``."""
    with _defaults.lock:
        if _defaults.client is None:
            url = _defaults.url or os.environ.get(ENV_URL)
            if not url:
                raise ConfigurationError(
                    f"no Redis configured: call redisbreaker.configure(url=...), set {ENV_URL},"
                    " or pass client="
                )
            _defaults.client = client_from_url(url, **{**CLIENT_DEFAULTS, **_defaults.options})
        return _defaults.client


def default_async_client() -> AsyncClient:
    """The asyncio client for the configured URL, one per event loop (an asyncio
    client belongs to the loop it was first used in)."""
    try:
        loop: Any = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    with _defaults.lock:
        found = _async_clients.get(loop) if loop is not None else None
    if found is None:
        found = async_client_from_url(default_url(), **{**CLIENT_DEFAULTS, **_defaults.options})
        if loop is not None:
            with _defaults.lock:
                found = _async_clients.setdefault(loop, found)
    return found


_async_clients: weakref.WeakKeyDictionary[Any, AsyncClient] = weakref.WeakKeyDictionary()


def is_configured() -> bool:
    """Whether ``configure()`` or ``REDISBREAKER_URL`` names a Redis (the defaults'
    place in the Celery integration's order; see :mod:`redisbreaker.celery.settings`)."""
    return bool(_defaults.client is not None or _defaults.url or os.environ.get(ENV_URL))


def default_commit_replicas() -> int:
    """``configure(commit_replicas=...)``, else ``REDISBREAKER_COMMIT_REPLICAS``, else 0."""
    if _defaults.commit_replicas is not None:
        return _defaults.commit_replicas
    env = os.environ.get(ENV_COMMIT_REPLICAS)
    return validate_commit_replicas(env, ENV_COMMIT_REPLICAS) if env else 0


# The most replicas a commit can wait for (Redis has no practical use for more).
MAX_COMMIT_REPLICAS = 64


def validate_commit_replicas(value: object, what: str = "commit_replicas") -> int:
    """How many replicas must have a transaction's COMMIT before it is handed over."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{what} must be a whole number, got {value!r}")
    if not 0 <= value <= MAX_COMMIT_REPLICAS:
        raise ConfigurationError(f"{what} must be from 0 to {MAX_COMMIT_REPLICAS}, got {value!r}")
    return value


def default_prefix() -> str:
    env = os.environ.get(ENV_PREFIX)
    if _defaults.prefix == DEFAULT_PREFIX and env:
        return validate_prefix(env)
    return _defaults.prefix


def describe() -> str:
    """The configured default Redis and prefix, for logs and debugging (credentials
    redacted)."""
    return repr(_defaults)


def reset() -> None:
    """Forget ``configure()`` and the clients built from it (and every ``fakeredis://``
    server): the state of a fresh process. For tests; ``REDISBREAKER_URL`` still applies."""
    with _defaults.lock:
        _defaults.url = None
        _defaults.client = None
        _defaults.prefix = DEFAULT_PREFIX
        _defaults.options = {}
        _defaults.commit_replicas = None
        _async_clients.clear()
    with _fake_lock:
        _fake_servers.clear()


def risky_client_settings(client: object) -> list[str]:
    """What in a user-supplied client would stall calls during an outage (or ``[]``).

    A client without a socket timeout hangs a call as long as Redis hangs; one that
    retries inside redis-py multiplies the timeout by its retry count (``redis.Redis()``
    retries 10 times by default). Cluster clients keep their retries: that is how
    they follow a failover.
    """
    kwargs = kwargs_of(client)
    if not kwargs:
        return []
    problems = []
    if kwargs.get("socket_timeout") is None:
        problems.append("no socket_timeout (a hung Redis blocks each call for as long as it hangs)")
    retry = kwargs.get("retry")
    retries = retry.get_retries() if retry is not None else 0
    if retries:
        problems.append(
            f"retry with {retries} retries (each stalled call waits up to {retries + 1} socket "
            "timeouts); pass retry=Retry(NoBackoff(), 0)"
        )
    return problems


_warned_clients: weakref.WeakSet[Any] = weakref.WeakSet()


def refuse_decoding_client(client: object, who: str) -> None:
    """A breaker's replies carry its state as bytes (lua/lib/codec.lua): a client that
    decodes every reply as text would garble them."""
    encoder = getattr(client, "get_encoder", None)
    try:
        decoding = bool(encoder().decode_responses) if callable(encoder) else False
    except Exception:  # a client that cannot say: assume the default (bytes)
        decoding = False
    if decoding:
        raise ConfigurationError(
            f"{who}: the Redis client decodes responses (decode_responses=True); pass a "
            "client that returns bytes (the default)"
        )


def warn_risky_client(client: object) -> None:
    """Log one WARNING per client whose settings would stall calls during an outage."""
    if type(client).__module__.startswith("fakeredis"):
        return  # in memory: nothing to stall
    try:
        if client in _warned_clients:
            return
        _warned_clients.add(client)
    except TypeError:  # not weak-referenceable: check it every time it is bound
        pass
    problems = risky_client_settings(client)
    if problems:
        logger.warning(
            "redisbreaker: the Redis client for %s has %s; during an outage the first call "
            "of each breaker stalls for that long",
            _where(kwargs_of(client)), "; and ".join(problems),
        )  # fmt: skip


def kwargs_of(client: object) -> dict[str, Any]:
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    return kwargs if isinstance(kwargs, dict) else {}


def _where(kwargs: dict[str, Any]) -> str:
    if kwargs.get("path"):
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
