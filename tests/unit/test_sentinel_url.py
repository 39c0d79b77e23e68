"""redis+sentinel:// URLs: parsing, validation, redaction, the clients built from them
(without connecting), and kombu's sentinel:// broker spelling."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
import redis.asyncio

import redisbreaker
from redisbreaker import config
from redisbreaker.errors import ConfigurationError
from redisbreaker.sentinel import (
    MASTER_CHECK_BACKOFF_MAX,
    AsyncBlockingSentinelConnectionPool,
    BlockingSentinelConnectionPool,
    MasterCheck,
    SentinelUrl,
    from_kombu,
)

SECRET = "s3cr3t"


def _pool(url: str, **options: Any) -> BlockingSentinelConnectionPool:
    """The pool of the sync client built from ``url`` (nothing connects)."""
    client = config.client_from_url(url, **options)
    assert isinstance(client, redis.Redis)
    pool = client.connection_pool
    assert isinstance(pool, BlockingSentinelConnectionPool)
    return pool


def _parsed(url: str) -> SentinelUrl:
    found = config.parse_url(url).sentinel
    assert found is not None
    return found


def test_documented_forms_parse() -> None:
    """Hosts, service, database, master and sentinel credentials, TLS: as documented."""
    url = _parsed("redis+sentinel://10.0.0.1:26379,10.0.0.2:26380,[::1]:26381/mymaster/3")
    assert url.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("::1", 26381))
    assert (url.service_name, url.db, url.tls, url.sentinel_tls) == ("mymaster", 3, False, False)
    assert url.username is None
    assert url.password is None
    auth = _parsed(
        "redis+sentinel://app:p%40ss%2Fw@s1:1,s2/svc?sentinel_password=sp%26x&sentinel_username=mon"
    )
    assert (auth.username, auth.password) == ("app", "p@ss/w")
    assert (auth.sentinel_username, auth.sentinel_password) == ("mon", "sp&x")
    assert auth.sentinels == (("s1", 1), ("s2", 26379))  # kombu's default port
    assert auth.db == 0
    tls = _parsed("rediss+sentinel://:pw@s1:1/svc?ssl_cert_reqs=none&sentinel_ssl=false")
    assert (tls.tls, tls.sentinel_tls, tls.password) == (True, False, "pw")
    assert dict(tls.ssl) == {"ssl_cert_reqs": "none"}
    plain_sentinels_tls = _parsed("redis+sentinel://s1:1/svc?sentinel_ssl=true&ssl_ca_certs=/ca")
    assert (plain_sentinels_tls.tls, plain_sentinels_tls.sentinel_tls) == (False, True)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://s1:26379", "names no service"),
        ("redis+sentinel://s1:26379/", "names no service"),
        ("redis+sentinel:///mymaster", "names no sentinel"),
        ("redis+sentinel://s1:notaport/mymaster", "sentinel 's1:notaport'"),
        ("redis+sentinel://s1:0/mymaster", "sentinel 's1:0'"),
        ("redis+sentinel://s1:1,,s2:2/mymaster", "sentinel ''"),
        ("redis+sentinel://s1:1,:2/mymaster", "sentinel ':2'"),
        ("redis+sentinel://::1:26379/mymaster", "expected host:port"),
        ("redis+sentinel://s1:1/mymaster/abc", "database 'abc'"),
        ("redis+sentinel://s1:1/mymaster/0/extra", "beyond /service_name/db"),
        ("redis+sentinel://s1:1/mymaster/", "beyond /service_name/db"),
        ("redis+sentinel://s1:1/mymaster?db=2", "query parameter 'db'"),
        ("redis+sentinel://s1:1/mymaster?sentinel_ssl=maybe", "true or false"),
        ("redis+sentinel://s1:1/mymaster?ssl_cert_reqs=none", "without TLS"),
        ("rediss+sentinel://s1:1/m?ssl_cert_reqs=sometimes", "ssl_cert_reqs='sometimes'"),
        ("redis+sentinel://s1:1/m?sentinel_username=a&sentinel_username=b", "repeats"),
        ("redis+sentinel://s1:1/m?sentinel_password=", "empty sentinel_password"),
        ("redis+sentinel://s1:1/m#frag", "fragment"),
    ],
)
def test_bad_urls_fail_at_configuration(url: str, message: str) -> None:
    """configure() refuses a bad Sentinel URL eagerly, naming what is wrong."""
    with pytest.raises(ConfigurationError, match=message.replace("?", r"\?")):
        redisbreaker.configure(url=url)


@pytest.mark.parametrize(
    "url",
    [
        f"redis+sentinel://admin:{SECRET}@s1:notaport/mymaster",
        f"redis+sentinel://admin:{SECRET}@s1:1",
        f"redis+sentinel://admin:{SECRET}@s1:1/m/x",
        f"redis+sentinel://s1:1/m?sentinel_password={SECRET}&bogus=1",
        f"redis+sentinel://s1:1/m?bogus=1&sentinel_password={SECRET}",
        f"redis+sentinel://s1:1/m/x?sentinel_password={SECRET}",
        f"redis+sentinel://admin:{SECRET}@s1:1/m?sentinel_password={SECRET}&db=1",
        # unencoded '/', '?', '#' in the password: a URL parser misreads where it ends
        f"redis+sentinel://admin:ab/{SECRET}@s1:1/mymaster",
        f"redis+sentinel://admin:ab?{SECRET}@s1:1/mymaster",
        f"redis+sentinel://admin:ab?x={SECRET}@s1:1/mymaster",
        f"redis+sentinel://admin:ab#{SECRET}@s1:1/mymaster",
        f"redis+sentinel://admin:{SECRET}#@s1:1/mymaster",
    ],
)
def test_errors_never_show_a_password(url: str) -> None:
    """A ConfigurationError names the URL with every password (master's or sentinels')
    redacted, also when an unencoded '/', '?' or '#' hides where the password ends."""
    with pytest.raises(ConfigurationError) as info:
        redisbreaker.configure(url=url)
    text = str(info.value)
    assert SECRET not in text
    assert "admin" not in text
    assert "Redis" in text


def test_unencoded_characters_in_a_password_are_named() -> None:
    """A password with an unencoded '/', '?' or '#' gets a message saying to encode it."""
    for char in "/?#":
        with pytest.raises(ConfigurationError, match="percent-encode"):
            config.parse_url(f"redis+sentinel://u:a{char}b@s1:1/mymaster")


def test_redaction_and_describe_hide_both_passwords() -> None:
    """redact_url and describe() hide the master's password and sentinel_password."""
    url = f"redis+sentinel://u:{SECRET}@s1:1,s2:2/m/0?sentinel_password={SECRET}"
    assert SECRET not in config.redact_url(url)
    assert "s1:1,s2:2/m/0" in config.redact_url(url)
    redisbreaker.configure(url=url)
    assert SECRET not in config.describe()


def test_parsed_url_repr_hides_credentials() -> None:
    """repr of a parsed Sentinel URL shows hosts and service, never a user or password."""
    parsed = _parsed(f"redis+sentinel://admin:{SECRET}@s1:1/m?sentinel_password={SECRET}")
    assert SECRET not in repr(parsed)
    assert "admin" not in repr(parsed)
    assert "s1" in repr(parsed)


def test_sync_client_has_the_library_defaults() -> None:
    """The client: a Redis on a blocking Sentinel pool, 2 s timeouts, no redis-py retries,
    the master's credentials and database; the sentinels: the same timeouts, no retries,
    their own credentials. Nothing connects."""
    client = config.client_from_url(
        f"redis+sentinel://app:{SECRET}@127.0.0.1:1,127.0.0.1:2/svc/4"
        "?sentinel_password=spw&sentinel_username=mon"
    )
    assert isinstance(client, redis.Redis)
    pool = client.connection_pool
    assert isinstance(pool, BlockingSentinelConnectionPool)
    assert (pool.service_name, pool.max_connections, pool.timeout) == ("svc", 100, 10.0)
    kwargs = pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (2.0, 2.0)
    assert kwargs["retry"].get_retries() == 0
    assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (4, "app", SECRET)
    sentinels = pool.sentinel_manager.sentinels
    assert len(sentinels) == 2
    skw = sentinels[0].connection_pool.connection_kwargs
    assert (skw["password"], skw["username"], skw["socket_timeout"]) == ("spw", "mon", 2.0)
    assert skw["retry"].get_retries() == 0
    assert config.risky_client_settings(client) == []
    assert SECRET not in repr(client)


def test_client_options_override_the_defaults() -> None:
    """configure()/client_from_url options reach the master's pool; sentinel_kwargs and
    min_other_sentinels reach the sentinels."""
    pool = _pool(
        "redis+sentinel://127.0.0.1:1/svc",
        socket_timeout=5.0,
        max_connections=7,
        sentinel_kwargs={"password": "given"},
        min_other_sentinels=1,
    )
    assert (pool.max_connections, pool.connection_kwargs["socket_timeout"]) == (7, 5.0)
    manager = pool.sentinel_manager
    assert manager.min_other_sentinels == 1
    skw = manager.sentinels[0].connection_pool.connection_kwargs
    assert (skw["password"], skw["socket_timeout"]) == ("given", 5.0)


def test_tls_reaches_the_master_and_by_default_the_sentinels() -> None:
    """rediss+sentinel:// makes both links TLS with the ssl_* options; sentinel_ssl=false
    keeps the sentinels plain."""
    pool = _pool("rediss+sentinel://127.0.0.1:1/svc?ssl_cert_reqs=none")
    assert issubclass(pool.connection_class, redis.sentinel.SentinelManagedSSLConnection)
    assert pool.connection_kwargs["ssl_cert_reqs"] == "none"
    skw = pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs
    assert skw["ssl_cert_reqs"] == "none"
    assert pool.sentinel_manager.sentinels[0].connection_pool.connection_class is (
        redis.SSLConnection
    )
    plain_pool = _pool("rediss+sentinel://127.0.0.1:1/svc?sentinel_ssl=false")
    s_pool = plain_pool.sentinel_manager.sentinels[0].connection_pool
    assert s_pool.connection_class is redis.Connection


def test_master_check_is_rate_limited_and_backs_off() -> None:
    """A pool asks the sentinels where the master is at most once per interval (one
    caller per due check); after failures the delay doubles up to a cap, and a success
    restores the interval."""
    check = MasterCheck(interval=1.0)
    assert check.due(100.0)
    assert not check.due(100.0)  # reserved by the first caller
    check.done(True, 100.0)
    assert not check.due(100.9)
    assert check.due(101.0)
    check.done(False, 101.0)
    assert not check.due(102.9)
    assert check.due(103.0)
    for _ in range(20):
        check.done(False, 103.0)
    assert check.delay == MASTER_CHECK_BACKOFF_MAX
    check.done(True, 200.0)
    assert check.due(201.0)


def test_async_client_is_the_twin() -> None:
    """The asyncio client has the same pool kind, defaults and credentials."""

    async def build() -> None:
        client = config.async_client_from_url(
            "redis+sentinel://:pw@127.0.0.1:1/svc/2?sentinel_password=spw"
        )
        assert isinstance(client, redis.asyncio.Redis)
        pool = client.connection_pool
        assert isinstance(pool, AsyncBlockingSentinelConnectionPool)
        kwargs = pool.connection_kwargs
        assert (kwargs["db"], kwargs["password"], kwargs["socket_timeout"]) == (2, "pw", 2.0)
        assert kwargs["retry"].get_retries() == 0
        skw = pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs
        assert (skw["password"], skw["retry"].get_retries()) == ("spw", 0)
        await client.aclose()

    asyncio.run(build())


def test_environment_variable_takes_a_sentinel_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """REDISBREAKER_URL may be a Sentinel URL; the default client is built from it."""
    monkeypatch.setenv(config.ENV_URL, "redis+sentinel://127.0.0.1:1/svc")
    client = config.default_client()
    assert isinstance(client, redis.Redis)
    assert isinstance(client.connection_pool, BlockingSentinelConnectionPool)


# -- kombu's spelling ----------------------------------------------------------------------


def test_kombu_broker_becomes_the_same_sentinel() -> None:
    """sentinel://a;sentinel://b with master_name: the same sentinels, service, database
    and master credentials; the sentinels' password from sentinel_kwargs; no password in
    the URL."""
    found = from_kombu(
        f"sentinel://app:{SECRET}@10.0.0.1:26379/2;sentinel://10.0.0.2:26380;sentinel://h3",
        {"master_name": "my master", "sentinel_kwargs": {"password": "spw"}},
    )
    assert found is not None
    assert found.url == "redis+sentinel://10.0.0.1:26379,10.0.0.2:26380,h3/my%20master/2"
    assert found.options == {
        "username": "app", "password": SECRET, "sentinel_kwargs": {"password": "spw"},
    }  # fmt: skip
    assert SECRET not in repr(found)
    parsed = _parsed(found.url)
    assert parsed.service_name == "my master"
    assert parsed.sentinels[2] == ("h3", 26379)


def test_kombu_broker_edge_cases() -> None:
    """No master_name or not a sentinel broker: None. An unencoded '/' in the password
    still reads as meant; broker_use_ssl makes the master link TLS, sentinels plain."""
    assert from_kombu("sentinel://h:1", {}) is None
    assert from_kombu("sentinel://h:1", None) is None
    assert from_kombu("redis://h:1/0", {"master_name": "m"}) is None
    assert from_kombu(None, {"master_name": "m"}) is None
    odd = from_kombu("sentinel://:a/b?c@h:1/;sentinel://h:2", {"master_name": "m"})
    assert odd is not None
    assert odd.url == "redis+sentinel://h:1,h:2/m/0"
    assert odd.options == {"password": "a/b?c"}
    tls = from_kombu("sentinel://h:1", {"master_name": "m"}, {"ssl_cert_reqs": "none"})
    assert tls is not None
    assert tls.url == "rediss+sentinel://h:1/m/0?sentinel_ssl=false"
    assert tls.options == {"ssl_cert_reqs": "none"}
    pool = _pool(tls.url, **tls.options)
    assert pool.connection_kwargs["ssl_cert_reqs"] == "none"
