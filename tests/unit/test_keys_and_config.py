"""Key escaping, URL parsing and credential redaction."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

import redisbreaker
from redisbreaker.config import parse_url, redact_url
from redisbreaker.errors import ConfigurationError
from redisbreaker.keys import KeySpace, escape_tag


@given(st.one_of(st.text(min_size=1), st.binary(min_size=1)))
def test_tags_are_brace_free(name: str | bytes) -> None:
    """An escaped tag never contains a brace, so the whole name is the hash tag."""
    tag = escape_tag(name)
    assert "{" not in tag
    assert "}" not in tag
    ks = KeySpace.of("rb:", "cb", name)
    assert len({key_slot(ks.key(p).encode()) for p in "spb"}) == 1


@given(st.binary(min_size=1), st.binary(min_size=1))
def test_escaping_is_injective(a: bytes, b: bytes) -> None:
    """Two different names never share keys."""
    if a != b:
        assert escape_tag(a) != escape_tag(b)


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "rediss://user:pw@cache.example:6380/2",
        "unix:///run/redis.sock",
        "unix://:pw@/run/redis.sock?db=3",
        "redis+cluster://10.0.0.1:7000,10.0.0.2:7001",
    ],
)
def test_good_urls(url: str) -> None:
    """The documented URL forms parse."""
    parse_url(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://localhost", "scheme 'http'"),
        ("redis://", "no host"),
        ("redis://localhost:99999", "invalid port"),
        ("redis://localhost/abc", "database 'abc'"),
        ("unix://", "socket path"),
        ("redis+cluster://host", "host:port"),
        ("", "non-empty"),
    ],
)
def test_bad_urls_fail_at_configuration(url: str, message: str) -> None:
    """configure() validates the URL eagerly and names the problem."""
    with pytest.raises(ConfigurationError, match=message):
        redisbreaker.configure(url=url)


def test_credentials_never_shown() -> None:
    """Passwords do not appear in errors, reprs or redacted URLs."""
    with pytest.raises(ConfigurationError) as info:
        redisbreaker.configure(url="redis://admin:s3cret@host:notaport/0")
    assert "s3cret" not in str(info.value)
    assert "s3cret" not in redact_url("rediss://admin:s3cret@host:1/0")
    redisbreaker.configure(url="redis://admin:s3cret@localhost:1/0")
    assert "s3cret" not in redisbreaker.config.describe()
    assert "localhost:1" in redisbreaker.config.describe()
