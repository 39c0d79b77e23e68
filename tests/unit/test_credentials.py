"""No password reaches a message, a repr or Celery's configuration dumps.

Every URL shape the library accepts (and kombu's broker spellings it reuses) is tried
with generated passwords, percent-encoded as they should be and raw as people write
them (a raw / # ? or @ moves urllib's split points, which is where leaks came from).
Each text a user could see is checked: the redacted URL, the ConfigurationError of
a refused URL, the repr of the configured defaults, the Celery Settings repr, and
Celery's censored configuration table (what ``celery report`` and ``celery inspect
conf`` print).
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import pytest
from celery import Celery
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import redisbreaker
import redisbreaker.celery
from redisbreaker import config
from redisbreaker.celery.settings import Settings
from redisbreaker.errors import ConfigurationError

SHAPES = [
    "redis://user:{pw}@127.0.0.1:6379/0",
    "redis://:{pw}@localhost/0",
    "rediss://admin:{pw}@cache.internal:6380/2",
    "redis://127.0.0.1:6379/0?password={pw}",
    "redis://127.0.0.1:6379/0?db=1&password={pw}&socket_timeout=1",
    "unix://:{pw}@/run/redis.sock?db=1",
    "unix:///run/redis.sock?password={pw}",
    "redis+cluster://:{pw}@10.0.0.1:7000,10.0.0.2:7000",
    "rediss+cluster://ops:{pw}@10.0.0.1:7000",
    "redis+sentinel://:{pw}@10.0.0.1:26379,10.0.0.2:26379/mymaster/0",
    "redis+sentinel://10.0.0.1:26379/mymaster?sentinel_password={pw}",
]
# kombu's broker spellings, reused as the library's Redis when nothing else is set.
BROKER_SHAPES = [
    "redis://:{pw}@10.0.0.1:6379/0",
    "redis+socket://:{pw}@/run/redis.sock",
    "sentinel://:{pw}@10.0.0.1:26379;sentinel://:{pw}@10.0.0.2:26379",
]

passwords = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=6, max_size=24
)


def _secret_forms(pw: str) -> set[str]:
    return {pw, quote(pw, safe="")}


def _leaks(text: str, pw: str) -> bool:
    return any(form in text for form in _secret_forms(pw))


def _fixed_text(shape: str) -> str:
    """What is shown for ``shape`` whatever the password: a generated password that
    happens to be part of it (``redisb``, say) proves nothing."""
    return " ".join(_seen_texts(shape.replace("{pw}", "X")))


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    yield
    config.reset()


def _seen_texts(url: str) -> list[str]:
    """Everything the library shows about ``url``: accepted or refused."""
    texts = [config.redact_url(url)]
    try:
        redisbreaker.configure(url=url)
    except ConfigurationError as exc:
        texts.append(str(exc))
    else:
        texts.append(config.describe())
    app = Celery(set_as_current=False)
    app.conf.redisbreaker_url = url
    try:
        texts.append(repr(Settings.from_conf(app.conf)))
    except ConfigurationError as exc:
        texts.append(str(exc))
    texts.append(repr(app.conf.table()))
    texts.append(str(app.conf.humanize()))
    return texts


@settings(max_examples=60, deadline=None)
@given(pw=passwords, shape=st.sampled_from(SHAPES), encoded=st.booleans())
def test_no_password_in_anything_shown(pw: str, shape: str, encoded: bool) -> None:
    assume(not _leaks(shape.replace("{pw}", "") + _fixed_text(shape), pw))
    url = shape.replace("{pw}", quote(pw, safe="") if encoded else pw)
    for text in _seen_texts(url):
        assert not _leaks(text, pw), (url, text)


@settings(max_examples=40, deadline=None)
@given(pw=passwords, shape=st.sampled_from(BROKER_SHAPES))
def test_no_broker_password_in_settings(pw: str, shape: str) -> None:
    fixed = " ".join(_broker_texts(shape.replace("{pw}", "X")))
    assume(not _leaks(shape.replace("{pw}", "") + fixed, pw))
    for text in _broker_texts(shape.replace("{pw}", quote(pw, safe=""))):
        assert not _leaks(text, pw), text


def _broker_texts(url: str) -> list[str]:
    app = Celery(broker=url, set_as_current=False)
    app.conf.broker_transport_options = {"master_name": "mymaster"}
    return [repr(Settings.from_conf(app.conf)), repr(app.conf.table()), str(app.conf.humanize())]


@pytest.mark.parametrize("char", ["/", "#", "?"])
def test_an_unencoded_reserved_character_is_refused_with_how_to_fix(char: str) -> None:
    """The URL is refused (not misread as another host or database), and the message
    says what to do without showing the password."""
    url = f"redis://user:ab{char}cd-s3cret@10.0.0.1:6379/0"
    with pytest.raises(ConfigurationError, match="percent-encode") as info:
        redisbreaker.configure(url=url)
    assert "s3cret" not in str(info.value) and "cd-" not in str(info.value)


def test_an_unencoded_at_sign_is_read_as_meant_and_redacted() -> None:
    """urllib splits the host off at the last '@', as redis-py does: accepted."""
    url = "redis://user:ab@cd-s3cret@10.0.0.1:6379/0"
    redisbreaker.configure(url=url)
    assert "s3cret" not in config.describe() and "10.0.0.1:6379" in config.describe()


def test_redact_url_keeps_what_helps() -> None:
    """Hosts, ports, database and other query parameters stay visible."""
    shown = config.redact_url("rediss://u:pw@h1:1,h2:2/3?password=x&ssl_cert_reqs=none")
    assert shown == "rediss://***@h1:1,h2:2/3?password=***&ssl_cert_reqs=none"
    two = config.redact_url("sentinel://:a@h1:26379;sentinel://:b@h2:26379")
    assert two == "sentinel://***@h1:26379;sentinel://***@h2:26379"


def test_celery_censors_the_setting_like_its_own_secrets() -> None:
    """The hook: Celery shows redisbreaker_url as it shows other secrets."""
    app = Celery(set_as_current=False)
    app.conf.redisbreaker_url = "redis://:hunter22@h/0"
    assert app.conf.table()["redisbreaker_url"] == "********"
    redisbreaker.celery.censor.censor_settings()  # idempotent
    assert "hunter22" not in str(app.conf.humanize())
