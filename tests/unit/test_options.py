"""Every option's invalid values fail at construction with a message naming the value."""

from __future__ import annotations

from typing import Any

import pytest

from redisbreaker import Backoff, ConfigurationError, CountWindow, SharedBreaker, TimeWindow

BAD: list[tuple[dict[str, Any], str]] = [
    ({"fail_max": 0}, "fail_max"),
    ({"fail_max": -3}, "fail_max"),
    ({"fail_max": 2.5}, "fail_max"),
    ({"fail_max": True}, "fail_max"),
    ({"fail_max": None}, "no trip policy"),
    ({"window": 10, "failure_rate_threshold": 0.5}, "window"),
    ({"window": CountWindow(10)}, "needs failure_rate_threshold"),
    ({"failure_rate_threshold": 0.5}, "needs a window"),
    ({"window": CountWindow(10), "failure_rate_threshold": 0}, "failure_rate_threshold"),
    ({"window": CountWindow(10), "failure_rate_threshold": 1.5}, "1.5"),
    ({"window": CountWindow(10), "failure_rate_threshold": float("nan")}, "nan"),
    ({"minimum_calls": 0}, "minimum_calls"),
    ({"slow_call_duration": 1.0}, "go together"),
    ({"window": TimeWindow(5), "slow_call_rate_threshold": 0.5}, "go together"),
    ({"window": TimeWindow(5), "slow_call_rate_threshold": 0.5, "slow_call_duration": -1},
     "slow_call_duration"),
    ({"reset_timeout": 0}, "reset_timeout"),
    ({"reset_timeout": "30"}, "'30'"),
    ({"reset_timeout": float("inf")}, "inf"),
    ({"backoff": 2}, "Backoff"),
    ({"reset_timeout": 60, "backoff": Backoff(max=10)}, "below reset_timeout"),
    ({"half_open_permits": 0}, "half_open_permits"),
    ({"trial_lease": 0}, "trial_lease"),
    ({"success_threshold": 0}, "success_threshold"),
    ({"record": "ValueError"}, "record"),
    ({"record": [ValueError, 3]}, "3"),
    ({"ignore": [int]}, "int"),
    ({"on_outage": "explode"}, "explode"),
    ({"sync_interval": 0}, "sync_interval"),
    ({"max_pending": 0}, "max_pending"),
    ({"ttl": 10, "reset_timeout": 60}, "ttl"),
]  # fmt: skip


@pytest.mark.parametrize(("options", "message"), BAD)
def test_bad_option_is_named(options: dict[str, Any], message: str) -> None:
    """The error names the option or the bad value."""
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(")):
        SharedBreaker("x", **options)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: CountWindow(0), "CountWindow.size"),
        (lambda: TimeWindow(-1), "TimeWindow.seconds"),
        (lambda: Backoff(multiplier=0.5), "multiplier"),
        (lambda: Backoff(jitter=2), "jitter"),
    ],
)
def test_bad_policy_objects(factory: Any, message: str) -> None:
    """Policy objects validate themselves."""
    with pytest.raises(ConfigurationError, match=message):
        factory()


@pytest.mark.parametrize("name", ["", b"", None, 42, "x" * 2000])
def test_bad_names(name: Any) -> None:
    """Empty, non-string and oversized names are refused."""
    with pytest.raises(ConfigurationError, match="name"):
        SharedBreaker(name, fail_max=1)


def test_bad_prefix_and_listener() -> None:
    """A prefix with braces would break the hash tag; listeners must be callable."""
    with pytest.raises(ConfigurationError, match="brace"):
        SharedBreaker("x", prefix="a{b}:", fail_max=1)
    with pytest.raises(ConfigurationError, match="on_state_change"):
        SharedBreaker("x", fail_max=1, on_state_change="print")  # type: ignore[arg-type]


def test_options_are_keyword_only() -> None:
    """All options are keyword-only."""
    with pytest.raises(TypeError):
        SharedBreaker("x", 5)  # type: ignore[call-arg]  # the point of the test


def test_breaker_settings_and_options_list_the_same_options() -> None:
    """BreakerSettings (what callers pass) and BreakerOptions (what is kept) cannot
    drift: the same names, in the same order."""
    import dataclasses

    from redisbreaker.options import BreakerOptions, BreakerSettings

    assert list(BreakerSettings.__annotations__) == [
        f.name for f in dataclasses.fields(BreakerOptions)
    ]


@pytest.mark.parametrize(
    ("backoff", "jittered"),
    [(None, False), (Backoff(jitter=0), False), (Backoff(multiplier=2, jitter=0.25), True)],
)
def test_the_random_number_travels_only_with_a_jitter(
    backoff: Backoff | None, jittered: bool
) -> None:
    """ARGV[2] is what the scripts lengthen an open period by, at random: a uniform
    [0, 1) number when the settings have a jitter, else "0" (never read)."""
    from redisbreaker.options import options_from

    options = options_from({"backoff": backoff, "ttl": 3600.0})
    sent = options.argv(clock="", rand=0.375, channel="c", event_prefix=b"")[1]
    assert options.jittered is jittered
    assert sent == ("0.375" if jittered else "0")
