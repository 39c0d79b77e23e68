"""Celery integration without workers: definition-time errors, settings, the claim script."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

import redisbreaker.celery
from redisbreaker import ConfigurationError, SharedBreaker
from redisbreaker.celery import shared_breaker
from redisbreaker.celery.settings import Settings, broker_redis_url
from redisbreaker.celery.task import BreakerSpec, spec_of
from redisbreaker.durability import eviction_risk
from redisbreaker.testing import VirtualClock


def _spec(task: Any) -> BreakerSpec:
    spec = spec_of(task)
    assert spec is not None
    return spec


def _noop() -> None:
    return None


def _app(**conf: Any) -> Celery:
    app = Celery("cfg", broker="redis://127.0.0.1:1/0", set_as_current=False)
    app.conf.update(conf)
    return app


def test_unknown_scope_pause_or_policy_fails_at_definition() -> None:
    """An unknown scope, pause scope or open policy is refused by the decorator itself."""
    with pytest.raises(ConfigurationError, match="scope"):
        shared_breaker(scope="galaxy")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="pause"):
        shared_breaker(pause="rack")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="on_open"):
        shared_breaker(on_open="drop")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="fail_max"):
        shared_breaker(fail_max=0)


def test_pause_wider_than_the_breaker_scope_is_refused() -> None:
    """pause='cluster' on a worker-scoped breaker is refused; pause='queue' is allowed."""
    with pytest.raises(ConfigurationError, match="needs scope='cluster'"):
        shared_breaker(scope="worker", pause="cluster")
    shared_breaker(scope="worker", pause="queue")


def test_reject_without_acks_late_fails_at_definition() -> None:
    """on_open='reject' on a task without acks_late raises, finalized app or not."""
    app = _app()
    app.finalize()
    with pytest.raises(ConfigurationError, match="acks_late"):

        @shared_breaker(on_open="reject")
        @app.task(name="t.reject_finalized")
        def finalized() -> None: ...

    lazy = _app()
    with pytest.raises(ConfigurationError, match="acks_late"):

        @shared_breaker(on_open="reject")
        @lazy.task(name="t.reject_lazy", acks_late=False)
        def explicit() -> None: ...

    @shared_breaker(on_open="reject")
    @lazy.task(name="t.reject_ok", acks_late=True)
    def fine() -> None: ...

    lazy.finalize()
    assert _spec(lazy.tasks["t.reject_ok"]).on_open == "reject"


def test_wrapping_a_task_twice_fails() -> None:
    """A task wrapped by shared_breaker twice raises, before and after finalization."""
    app = _app()
    app.finalize()
    task = app.task(name="t.twice")(_noop)
    shared_breaker()(task)
    with pytest.raises(ConfigurationError, match="already wrapped"):
        shared_breaker()(task)
    lazy = _app()
    proxy = lazy.task(name="t.twice_lazy")(_noop)
    shared_breaker()(proxy)
    with pytest.raises(ConfigurationError, match="already wrapped"):
        shared_breaker()(proxy)


def test_applied_below_app_task_is_refused() -> None:
    """shared_breaker given a plain function says to put it above @app.task."""
    with pytest.raises(ConfigurationError, match=r"above @app\.task"):
        shared_breaker()(_noop)


def test_celery_control_flow_never_counts_as_failure() -> None:
    """Retry, Reject and Ignore are ignored outcomes; other errors are failures."""
    from celery.exceptions import Ignore, Reject, Retry

    app = _app()
    app.finalize()
    task = shared_breaker(fail_max=1)(app.task(name="t.flow")(_noop))
    spec = _spec(task)
    breaker = SharedBreaker("x", **spec.options())
    for exc in (Retry(), Reject(), Ignore()):
        assert breaker.options.outcome(exc, 0.0) == "x"
    assert breaker.options.outcome(RuntimeError(), 0.0) == "1"


def test_settings_fall_back_to_a_redis_broker() -> None:
    """redisbreaker_url defaults to the broker URL when the broker is Redis."""
    assert broker_redis_url("redis://h:1/2") == "redis://h:1/2"
    assert broker_redis_url("redis+socket:///tmp/r.sock") == "unix:///tmp/r.sock"
    assert broker_redis_url("amqp://guest@h//") is None
    conf = Settings.from_conf(_app(broker_url="redis://h:1/3").conf)
    assert conf.broker_url == "redis://h:1/3"
    assert conf.visibility_timeout == 3600
    amqp = Settings.from_conf(_app(broker_url="amqp://h//").conf)
    with pytest.raises(ConfigurationError, match="redisbreaker_url"):
        amqp.client()


def test_bad_settings_are_refused() -> None:
    """A bad outage policy, URL or prefix in app.conf raises ConfigurationError."""
    with pytest.raises(ConfigurationError, match="on_outage"):
        Settings.from_conf(_app(redisbreaker_on_outage="maybe").conf)
    with pytest.raises(ConfigurationError):
        Settings.from_conf(_app(redisbreaker_url="http://x").conf)
    with pytest.raises(ConfigurationError, match="brace"):
        Settings.from_conf(_app(redisbreaker_prefix="a{b}").conf)


def test_retry_countdown_stays_below_visibility_timeout() -> None:
    """A retry countdown is capped below the Redis broker's visibility timeout."""
    app = _app(broker_transport_options={"visibility_timeout": 100})
    app.finalize()
    task = shared_breaker()(app.task(name="t.vt")(_noop))
    assert _spec(task).open_countdown(500.0) == 50.0
    assert 3.0 <= _spec(task).open_countdown(3.0) <= 4.0


@pytest.fixture
def evicting(r: redis.Redis) -> Iterator[redis.Redis]:
    old = r.config_get("maxmemory*")
    r.config_set("maxmemory-policy", "allkeys-lru")
    yield r
    r.config_set("maxmemory-policy", str(old["maxmemory-policy"]))
    r.config_set("maxmemory", str(old["maxmemory"]))


def test_eviction_policy_warning(evicting: redis.Redis) -> None:
    """Eviction needs a maxmemory and a policy other than noeviction: only then the
    warning, which says why volatile-* policies are the worst for the library."""
    assert eviction_risk(evicting) is None  # no maxmemory: nothing is ever evicted
    evicting.config_set("maxmemory", 1 << 30)
    assert "allkeys-lru" in (eviction_risk(evicting) or "")
    evicting.config_set("maxmemory-policy", "volatile-ttl")
    assert "first to go" in (eviction_risk(evicting) or "")
    evicting.config_set("maxmemory-policy", "noeviction")
    assert eviction_risk(evicting) is None


def test_manual_pause_api_validates_its_scope() -> None:
    """pause() needs worker= for scope 'worker' and queue= for scope 'queue'."""
    app = _app()
    with pytest.raises(ConfigurationError, match="worker="):
        redisbreaker.celery.pause(app, scope="worker")
    with pytest.raises(ConfigurationError, match="queue="):
        redisbreaker.celery.resume(app, scope="queue")
    with pytest.raises(ConfigurationError, match="scope"):
        redisbreaker.celery.pause(app, scope="everything")  # type: ignore[arg-type]


def _claim(r: redis.Redis, breaker: SharedBreaker, me: str, mode: str = "trial") -> list[Any]:
    verdict = breaker.claim_gate(me, 5000, mode)
    return [verdict.action, verdict.generation, verdict.ms]


def test_claim_gives_the_trial_to_exactly_one_of_many_workers(r: redis.Redis) -> None:
    """At the deadline, 30 workers claim at once: exactly one gets 'trial'."""
    clock = VirtualClock()
    breaker = SharedBreaker("claim", client=r, fail_max=1, reset_timeout=30)
    clock.attach(breaker)
    assert _claim(r, breaker, "w0")[0] == "resume"
    breaker.open(30)
    assert _claim(r, breaker, "w0")[0] == "wait"
    barrier = threading.Barrier(30)
    replies: list[str] = []

    def claim(i: int) -> None:
        barrier.wait()
        replies.append(_claim(r, breaker, f"w{i}")[0])

    clock.advance(31)
    threads = [threading.Thread(target=claim, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(replies).count("trial") == 1
    assert replies.count("wait") == 29
    # A re-open is a new open period: the old lease no longer holds.
    winner = next(f"w{i}" for i in range(30) if _claim(r, breaker, f"w{i}")[0] == "trial")
    breaker.open(5)
    clock.advance(6)
    other = "w29" if winner != "w29" else "w28"
    assert _claim(r, breaker, other)[0] == "trial"


def test_claim_in_manual_mode_resumes_everyone_at_the_deadline(r: redis.Redis) -> None:
    """A manual pause has no trial: after its deadline every worker resumes."""
    clock = VirtualClock()
    breaker = SharedBreaker("manual", client=r, fail_max=1, reset_timeout=1.0)
    clock.attach(breaker)
    breaker.force_open()
    assert _claim(r, breaker, "a", "manual")[:1] == ["wait"]
    breaker.open(5)
    assert _claim(r, breaker, "a", "manual")[0] == "wait"
    clock.advance(6)
    assert _claim(r, breaker, "a", "manual")[0] == "resume"
    assert _claim(r, breaker, "b", "manual")[0] == "resume"


def test_attempt_history_listens_only_for_apps_with_dead_letters() -> None:
    """Celery sends task_success only when someone listens: the attempt history's
    receivers are connected when a worker of an app with dead letters starts
    (install's worker set-up), not by importing the integration."""
    from celery import signals

    from redisbreaker.celery import deadletter

    watched = (signals.task_prerun, signals.task_retry, signals.task_failure,
               signals.task_success)  # fmt: skip

    def ours(signal: Any) -> list[Any]:
        return [
            r for _, r in signal.receivers if getattr(r, "__module__", "") == deadletter.__name__
        ]

    for signal in watched:  # whatever earlier tests connected
        for receiver in ours(signal):
            signal.disconnect(receiver)
    deadletter.use_dead_letter_requests(_app())
    assert not any(ours(signal) for signal in watched)
    deadletter.use_dead_letter_requests(_app(redisbreaker_dead_letter=True))
    assert all(len(ours(signal)) == 1 for signal in watched)
