"""Redis Sentinel: ``redis+sentinel://`` URLs, the clients built from them, and Celery's
``sentinel://`` broker spelling.

``redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]`` names
the sentinels to ask and the service (the name in ``sentinel monitor``) whose master
every command goes to; ``rediss+sentinel://`` speaks TLS. The user and password in the
URL are the master's (the replicas' too: they are what commands authenticate with).
Sentinels that require a password of their own take ``?sentinel_password=`` (and
``sentinel_username=`` for an ACL user); sentinels speak TLS when the scheme does,
unless ``sentinel_ssl=false``.

How a failover is followed, without retries inside redis-py: every new connection asks
the sentinels for the master first (``SENTINEL MASTERS``, skipping a master they think
is down), and a connection that fails is dropped. So during a failover each call fails
fast, as an outage (connection refused, or ``MasterNotFoundError`` while the sentinels
agree that the master is down), and the first call after the promotion reaches the new
master. Retrying in redis-py would only stretch each failing call over several
timeouts; the library retries by itself where a call is idempotent (transactions) and
applies the outage policy elsewhere (breakers). The pub/sub hub reconnects the same
way: its new connection asks the sentinels, so it subscribes on the new master.

A master demoted while it stays up (``SENTINEL FAILOVER``, a healed partition) is the
other case: it goes on accepting writes until Sentinel reconfigures it, and they are
lost. So a pool also asks the sentinels where the master is once a second (at a
connection checkout: :class:`MasterCheck`) and drops its connections to a master that
moved; a demoted master's ``READONLY`` drops the connection too (redis-py).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, parse_qsl, quote, unquote

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from redisbreaker.errors import ConfigurationError

SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_PORT = 26379  # Sentinel's own default port, as kombu assumes it too

# Query parameters a Sentinel URL accepts, and how each one is read.
_TEXT = ("sentinel_username", "sentinel_password", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_FLAGS = ("sentinel_ssl", "ssl_check_hostname")
_CERT_REQS = ("none", "optional", "required")
QUERY_KEYS = (*_TEXT, *_FLAGS, "ssl_cert_reqs")
_SSL_KEYS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname", "ssl_cert_reqs")

_IDENTIFIER = re.compile(r"[a-z_]+")


@dataclass(frozen=True, slots=True)
class SentinelUrl:
    """A parsed ``redis+sentinel://`` URL. Credentials are kept out of ``repr``."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int
    tls: bool  # to the master and replicas
    sentinel_tls: bool
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    ssl: Mapping[str, Any] = field(default_factory=dict)  # ssl_* options, for every TLS link


def parse(parts: SplitResult, shown: str) -> SentinelUrl:
    """Validate a ``redis+sentinel://`` URL split by ``urlsplit``. ``shown`` is the URL
    as messages may show it (``config.redact_url``: no user, password or
    ``sentinel_password``). ``config.parse_url`` has already refused an ``@`` after
    the host part (an unencoded ``/``, ``?`` or ``#`` in a password), so the host
    part holds no piece of a password and may be quoted."""
    what = f"Redis Sentinel URL {shown!r}"
    if parts.fragment:
        raise ConfigurationError(f"{what} has a '#' fragment; expected none")
    hosts = parts.netloc.rpartition("@")[2]
    if not hosts:
        raise ConfigurationError(f"{what} names no sentinel; expected host:port[,host:port...]")
    sentinels = tuple(_node(item, what) for item in hosts.split(","))
    segments = parts.path.split("/")[1:] if parts.path else []
    if not segments or not segments[0]:
        raise ConfigurationError(
            f"{what} names no service; expected "
            f"{parts.scheme}://host:port[,host:port...]/service_name[/db]"
        )
    if len(segments) > 2 or (len(segments) == 2 and not segments[1]):
        raise ConfigurationError(f"{what} has a path beyond /service_name/db")
    db = segments[1] if len(segments) == 2 else "0"
    if not db.isdigit():
        raise ConfigurationError(f"{what} has database {db!r}; expected a number")
    query = _query(parts.query, what)
    tls = parts.scheme.startswith("rediss")
    sentinel_tls = query.pop("sentinel_ssl", tls)
    if not (tls or sentinel_tls) and any(k in query for k in _SSL_KEYS):
        raise ConfigurationError(
            f"{what} sets ssl_* options without TLS; use rediss+sentinel:// or sentinel_ssl=true"
        )
    return SentinelUrl(
        sentinels=sentinels,
        service_name=unquote(segments[0]),
        db=int(db),
        tls=tls,
        sentinel_tls=bool(sentinel_tls),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        sentinel_username=query.pop("sentinel_username", None),
        sentinel_password=query.pop("sentinel_password", None),
        ssl=query,
    )


def _node(item: str, what: str) -> tuple[str, int]:
    """``host:port``, ``[ipv6]:port``, or either without ``:port`` (26379), of a sentinel."""
    host, port = "", "x"
    if item.startswith("["):
        inside, closed, rest = item[1:].partition("]")
        if closed and (not rest or rest.startswith(":")):
            host, port = inside, rest[1:] if rest else str(DEFAULT_PORT)
    elif item.count(":") <= 1:  # an IPv6 address must be bracketed
        host, colon, port = item.partition(":")
        port = port if colon else str(DEFAULT_PORT)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(f"{what} has sentinel {item!r}; expected host:port")
    return host, int(port)


def _query(query: str, what: str) -> dict[str, Any]:
    """The query's options, read; unknown or repeated keys are refused."""
    out: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if not _IDENTIFIER.fullmatch(key):
            raise ConfigurationError(
                f"{what} has a query it cannot read (percent-encode '?', '#', '/' and '&' "
                "in passwords)"
            )
        if key not in QUERY_KEYS:
            raise ConfigurationError(
                f"{what} has query parameter {key!r}; expected any of {QUERY_KEYS}"
            )
        if key in out:
            raise ConfigurationError(f"{what} repeats query parameter {key!r}")
        out[key] = _value(key, value, what)
    return out


def _value(key: str, value: str, what: str) -> Any:
    if key in _FLAGS:
        lowered = value.lower()
        if lowered not in ("true", "false", "yes", "no", "1", "0"):
            raise ConfigurationError(f"{what} has {key}={value!r}; expected true or false")
        return lowered in ("true", "yes", "1")
    if key == "ssl_cert_reqs":
        if value.lower() not in _CERT_REQS:
            raise ConfigurationError(f"{what} has ssl_cert_reqs={value!r}; expected {_CERT_REQS}")
        return value.lower()
    if not value:
        raise ConfigurationError(f"{what} has an empty {key}")
    return value


# -- clients -----------------------------------------------------------------------------


# How often (seconds) a pool asks the sentinels, at a connection checkout, whether the
# master moved. A crashed master needs no check: its connections fail, and new ones ask
# the sentinels. But a master demoted while alive (SENTINEL FAILOVER, a healed
# partition) accepts writes on the connections already open to it until Sentinel
# reconfigures it, which takes up to ~10 s (its INFO period), and those writes are
# lost. With the check, a pool leaves it within a second of the sentinels naming the
# new master. A failed check is retried later with a doubling delay (up to a minute),
# so sentinels that do not answer stall a checkout at most that rarely.
MASTER_CHECK_INTERVAL = 1.0
MASTER_CHECK_BACKOFF_MAX = 60.0


class MasterCheck:
    """When a pool next asks the sentinels where the master is (no I/O)."""

    def __init__(self, interval: float = MASTER_CHECK_INTERVAL) -> None:
        self.interval = interval
        self.delay = interval
        self.next_at = 0.0
        self.master: object = None  # the master's address at the last check

    def due(self, now: float) -> bool:
        """Whether to check now; a check that is due is reserved for the caller."""
        if now < self.next_at:
            return False
        self.next_at = now + self.delay  # concurrent checkouts do not all ask
        return True

    def done(self, ok: bool, now: float) -> None:
        self.delay = self.interval if ok else min(self.delay * 2, MASTER_CHECK_BACKOFF_MAX)
        self.next_at = now + self.delay

    def moved(self, address: object) -> bool:
        """Whether the sentinels now name another master than at the last check."""
        before, self.master = self.master, address
        return before is not None and address != before


class BlockingSentinelConnectionPool(
    redis.sentinel.SentinelConnectionPool, redis.BlockingConnectionPool
):
    """A Sentinel pool that waits for a free connection (like the library's standalone
    clients) instead of opening connections without bound, and that checks where the
    master is at most once per :data:`MASTER_CHECK_INTERVAL` (see above)."""

    # redis-py leaves the Sentinel pools unannotated: the ignores below are for that.
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.master_check = MasterCheck()

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if self.is_master and self.master_check.due(time.monotonic()):
            try:
                # Drops the idle connections if the master moved.
                address = self.get_master_address()  # type: ignore[no-untyped-call]
            except (redis.ConnectionError, redis.TimeoutError):
                self.master_check.done(False, time.monotonic())
            else:
                self.master_check.done(True, time.monotonic())
                if self.master_check.moved(address):
                    # And the ones in use: a pub/sub connection is held for good, and
                    # would stay subscribed on the old master.
                    self.disconnect(inuse_connections=True)
        return super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]


class AsyncBlockingSentinelConnectionPool(
    redis.asyncio.sentinel.SentinelConnectionPool, redis.asyncio.BlockingConnectionPool
):
    """The asyncio twin of :class:`BlockingSentinelConnectionPool`."""

    # redis-py leaves the Sentinel pools unannotated: the ignores below are for that.
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.master_check = MasterCheck()

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if self.is_master and self.master_check.due(time.monotonic()):
            try:
                address = await self.get_master_address()  # type: ignore[no-untyped-call]
            except (redis.ConnectionError, redis.TimeoutError):
                self.master_check.done(False, time.monotonic())
            else:
                self.master_check.done(True, time.monotonic())
                if self.master_check.moved(address):
                    await self.disconnect(inuse_connections=True)
        return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]


def _kwargs(
    url: SentinelUrl, options: Mapping[str, Any], retry: object
) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(the master's connection and pool options, the sentinels' connection options,
    ``min_other_sentinels``) for ``url``; ``options`` override the master's, and
    ``options["sentinel_kwargs"]`` the sentinels'."""
    rest = dict(options)
    given_sentinel = rest.pop("sentinel_kwargs", None) or {}
    if not isinstance(given_sentinel, Mapping):
        raise ConfigurationError(f"sentinel_kwargs must be a dict, got {type(given_sentinel)}")
    min_other = rest.pop("min_other_sentinels", 0)
    master: dict[str, Any] = {"retry": retry, "db": url.db, "ssl": url.tls}
    if url.tls:
        master.update(url.ssl)
    if url.username:
        master["username"] = url.username
    if url.password:
        master["password"] = url.password
    master.update(rest)
    # The sentinels get the same timeouts and no retries: a sentinel that is down must
    # cost one connect timeout before the next one is asked, not several.
    sentinel: dict[str, Any] = {k: v for k, v in master.items() if k.startswith("socket_")}
    sentinel["retry"] = retry
    if url.sentinel_tls:
        sentinel.update({"ssl": True, **url.ssl})
    if url.sentinel_username:
        sentinel["username"] = url.sentinel_username
    if url.sentinel_password:
        sentinel["password"] = url.sentinel_password
    sentinel.update(given_sentinel)
    return master, sentinel, int(min_other)


def client(url: SentinelUrl, options: Mapping[str, Any]) -> redis.Redis:
    """A client of ``url``'s master: a ``redis.Redis`` on a Sentinel-managed blocking
    pool, with no retries inside redis-py (see the module docstring). ``options`` are
    the library's defaults merged with the caller's (connection and pool options, plus
    ``sentinel_kwargs`` and ``min_other_sentinels``)."""
    master, sentinel_kwargs, min_other = _kwargs(url, options, Retry(NoBackoff(), 0))
    # redis-py leaves the sync Sentinel unannotated.
    manager = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        list(url.sentinels), min_other_sentinels=min_other, sentinel_kwargs=sentinel_kwargs
    )
    found: redis.Redis = manager.master_for(  # type: ignore[no-untyped-call]
        url.service_name, connection_pool_class=BlockingSentinelConnectionPool, **master
    )
    return found


def async_client(url: SentinelUrl, options: Mapping[str, Any]) -> redis.asyncio.Redis:
    """The asyncio twin of :func:`client`."""
    master, sentinel_kwargs, min_other = _kwargs(url, options, AsyncRetry(NoBackoff(), 0))
    manager = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        list(url.sentinels), min_other_sentinels=min_other, sentinel_kwargs=sentinel_kwargs
    )
    found: redis.asyncio.Redis = manager.master_for(
        url.service_name, connection_pool_class=AsyncBlockingSentinelConnectionPool, **master
    )
    return found


# -- Celery's broker spelling ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokerSentinel:
    """A Celery ``sentinel://`` broker as a ``redis+sentinel://`` URL (without any
    password) and the client options that carry the credentials and TLS settings."""

    url: str
    options: dict[str, Any] = field(repr=False)


def from_kombu(
    broker_url: object, transport_options: object, use_ssl: object = None
) -> BrokerSentinel | None:
    """The Sentinel of a Celery broker spelled as kombu does, or ``None``.

    ``sentinel://[user:password@]host:port[/db];sentinel://host:port;...`` lists the
    sentinels; the first URL's user, password and database are the master's (as kombu
    reads them). ``transport_options["master_name"]`` names the service (``None`` is
    returned without it: kombu refuses such a broker too), ``["sentinel_kwargs"]`` is
    how the sentinels are connected to (their password), ``["min_other_sentinels"]``
    passes through, and a ``broker_use_ssl`` dict makes the master link TLS with its
    ``ssl_*`` options, the sentinels staying plain unless ``sentinel_kwargs`` says so.
    """
    if not isinstance(broker_url, str):
        return None
    urls = [u.strip() for u in broker_url.split(";") if u.strip()]
    if not urls or not urls[0].lower().startswith("sentinel://"):
        return None
    topts = transport_options if isinstance(transport_options, Mapping) else {}
    master_name = topts.get("master_name")
    if not isinstance(master_name, str) or not master_name:
        return None
    hosts: list[str] = []
    userinfo, db = "", "0"
    for i, item in enumerate(urls):
        if not item.lower().startswith("sentinel://"):
            continue
        # The last "@" ends the credentials, so a password with an unencoded "/" or "?"
        # still reads as its owner meant it.
        credentials, _, rest = item[len("sentinel://") :].rpartition("@")
        authority, _, path = rest.partition("/")
        authority = authority.split("?", 1)[0]
        hosts.append(authority or f"127.0.0.1:{DEFAULT_PORT}")
        if i == 0:
            userinfo = credentials
            db = path.split("?", 1)[0].strip("/") or "0"
    options: dict[str, Any] = {}
    if userinfo:
        user, _, password = userinfo.partition(":")
        if user:
            options["username"] = unquote(user)
        if password:
            options["password"] = unquote(password)
    sentinel_kwargs = topts.get("sentinel_kwargs")
    if isinstance(sentinel_kwargs, Mapping):
        options["sentinel_kwargs"] = dict(sentinel_kwargs)
    if topts.get("min_other_sentinels"):
        options["min_other_sentinels"] = topts["min_other_sentinels"]
    scheme, query = "redis+sentinel", ""
    if isinstance(use_ssl, Mapping):
        scheme, query = "rediss+sentinel", "?sentinel_ssl=false"
        options.update({str(k): v for k, v in use_ssl.items()})
    service = quote(master_name, safe="")
    return BrokerSentinel(f"{scheme}://{','.join(hosts)}/{service}/{db}{query}", options)
