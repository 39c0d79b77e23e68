"""SharedBreaker against a real redis-server: states, policies, listeners, hot path."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis
from redis.crc import key_slot

import redisbreaker
from redisbreaker import (
    Backoff,
    CircuitOpenError,
    CorruptStateError,
    CountWindow,
    SharedBreaker,
    State,
    TimeWindow,
)
from redisbreaker.events import hub_for
from redisbreaker.state import Transition
from redisbreaker.testing import VirtualClock
from tests.helpers import Boom, boom, fail_n, ok, script_calls, settle_hub, wait_for


def make(
    r: redis.Redis, name: str | bytes = "api", clock: VirtualClock | None = None, **kw: Any
) -> SharedBreaker:
    """A breaker on ``r``; with ``clock``, it reads that clock locally and in Redis."""
    kw.setdefault("reset_timeout", 30)
    b = SharedBreaker(name, client=r, **kw)
    if clock is not None:
        clock.attach(b)
    return b


def test_three_ways_in(r: redis.Redis) -> None:
    """call(), the decorator and the context manager all run the function and count it."""
    b = make(r, fail_max=3)

    @b
    def decorated(x: int) -> int:
        return x * 2

    assert b.call(ok) == "ok"
    assert decorated(21) == 42
    with b:
        pass
    with pytest.raises(Boom), b:
        boom()
    assert getattr(decorated, "__wrapped__").__name__ == "decorated"  # noqa: B009  # functools.wraps kept it
    with pytest.raises(Boom):
        b.call(boom)
    assert b.snapshot().consecutive_failures == 2


def test_trips_after_fail_max_and_refuses_with_retry_after(r: redis.Redis) -> None:
    """fail_max consecutive failures open the breaker; calls then get CircuitOpenError."""
    b = make(r, fail_max=3, reset_timeout=30)
    fail_n(b.call, 3)
    with pytest.raises(CircuitOpenError) as info:
        b.call(ok)
    assert info.value.name == "api"
    assert 0 < info.value.retry_after <= 30
    snap = b.snapshot()
    assert snap.state is State.OPEN
    assert 0 < snap.retry_after <= 30
    assert snap.trips == 1


def test_success_resets_the_consecutive_count(r: redis.Redis) -> None:
    """A success between failures starts the count again (flushed with the next failure)."""
    b = make(r, fail_max=3)
    fail_n(b.call, 2)
    b.call(ok)
    fail_n(b.call, 2)
    assert b.snapshot().state is State.CLOSED


def test_half_open_trial_closes_or_reopens(r: redis.Redis) -> None:
    """After reset_timeout one trial runs: success closes; failure re-opens."""
    changes: list[tuple[State, State]] = []
    clock = VirtualClock()
    b = make(r, clock=clock, fail_max=1, on_state_change=lambda o, n: changes.append((o, n)))
    fail_n(b.call, 1)
    clock.advance(29)
    with pytest.raises(CircuitOpenError):
        b.call(ok)  # not before reset_timeout
    clock.advance(1)
    fail_n(b.call, 1)  # the trial fails
    assert b.snapshot().state is State.OPEN
    clock.advance(30)
    assert b.call(ok) == "ok"
    assert b.snapshot().state is State.CLOSED
    assert changes == [
        (State.CLOSED, State.OPEN),
        (State.OPEN, State.HALF_OPEN),
        (State.HALF_OPEN, State.OPEN),
        (State.OPEN, State.HALF_OPEN),
        (State.HALF_OPEN, State.CLOSED),
    ]


def test_success_threshold_and_permits(r: redis.Redis) -> None:
    """half_open_permits trials may run at once; success_threshold successes close."""
    clock = VirtualClock()  # one clock for all three: Redis stores absolute deadlines
    b = make(r, clock=clock, fail_max=1, half_open_permits=2, success_threshold=2)
    other = make(
        redis.Redis(connection_pool=r.connection_pool),
        clock=clock,
        fail_max=1,
        half_open_permits=2,
        success_threshold=2,
    )
    third = make(
        redis.Redis(connection_pool=r.connection_pool),
        clock=clock,
        fail_max=1,
        half_open_permits=2,
        success_threshold=2,
    )
    fail_n(b.call, 1)
    clock.advance(30)
    with b:  # trial 1 holds a permit
        with other:  # trial 2 holds the other
            with pytest.raises(CircuitOpenError) as info:
                third.call(ok)
            assert info.value.state == "half_open"
        assert b.snapshot().state is State.HALF_OPEN  # one success is not enough
    assert b.snapshot().state is State.CLOSED


def test_trial_lease_expires_when_its_holder_dies(r: redis.Redis) -> None:
    """A permit whose holder never reports frees itself after trial_lease, not before."""
    clock = VirtualClock()
    b = make(r, clock=clock, fail_max=1, trial_lease=10)
    fail_n(b.call, 1)
    clock.advance(30)
    b.__enter__()  # takes the permit and never exits, like a killed process
    other = make(
        redis.Redis(connection_pool=r.connection_pool), clock=clock, fail_max=1, trial_lease=10
    )
    with pytest.raises(CircuitOpenError) as info:
        other.call(ok)
    assert info.value.state == "half_open"
    clock.advance(9)  # past other's cached view, within the lease: Redis refuses
    with pytest.raises(CircuitOpenError) as info:
        other.call(ok)
    assert info.value.state == "half_open"
    clock.advance(1)  # the lease is over
    assert other.call(ok) == "ok"
    assert other.snapshot().state is State.CLOSED


def test_record_and_ignore(r: redis.Redis) -> None:
    """Only recorded exceptions count; ignored ones and predicates are respected."""
    b = make(r, fail_max=2, record=(Boom, lambda e: "count me" in str(e)), ignore=KeyError)
    for exc in (KeyError("x"), ValueError("plain"), ValueError("please count me")):
        with pytest.raises(type(exc)):
            b.call(_raiser(exc))
    assert b.snapshot().consecutive_failures == 1


def _raiser(exc: BaseException):  # type: ignore[no-untyped-def]
    def fn() -> None:
        raise exc

    return fn


def test_operator_states_apply_cluster_wide(r: redis.Redis) -> None:
    """force_open, disable and reset made by one process bind every other one."""
    a = make(r, fail_max=1)
    b = make(redis.Redis(connection_pool=r.connection_pool), fail_max=1)
    a.force_open()
    with pytest.raises(CircuitOpenError) as info:
        b.call(ok)
    assert info.value.state == "forced_open"
    a.disable()
    b.sync()
    fail_n(b.call, 5)  # disabled: nothing is recorded, nothing trips
    snap = a.snapshot()
    assert (snap.state, snap.consecutive_failures) == (State.DISABLED, 0)
    a.reset()
    assert b.sync().state is State.CLOSED
    fail_n(b.call, 1)
    assert a.snapshot().state is State.OPEN


def test_manual_open_for_a_duration(r: redis.Redis) -> None:
    """open(seconds) refuses calls until the deadline, then admits a trial."""
    clock = VirtualClock()
    b = make(r, clock=clock, fail_max=5)
    snap = b.open(20)
    assert snap.state is State.OPEN and snap.retry_after == 20
    with pytest.raises(CircuitOpenError):
        b.call(ok)
    clock.advance(19)  # past the cached view: Redis refuses, 1 s left
    with pytest.raises(CircuitOpenError) as info:
        b.call(ok)
    assert info.value.retry_after == 1
    clock.advance(1)
    assert b.call(ok) == "ok"
    assert b.snapshot().state is State.CLOSED


def test_listener_runs_once_in_the_process_that_made_the_transition(r: redis.Redis) -> None:
    """on_state_change fires where the script made the change, not in the others."""
    seen_a: list[tuple[State, State]] = []
    seen_b: list[tuple[State, State]] = []
    events_a: list[Transition] = []
    a = make(r, fail_max=2, on_state_change=lambda o, n: seen_a.append((o, n)))
    a.subscribe(events_a.append)
    b = make(
        redis.Redis(connection_pool=r.connection_pool),
        fail_max=2,
        on_state_change=lambda o, n: seen_b.append((o, n)),
    )
    fail_n(a.call, 1)  # binds a: it joins the hub
    assert wait_for(lambda: _hub_connected(a))
    fail_n(b.call, 1)  # b's failure is the one that trips
    assert seen_b == [(State.CLOSED, State.OPEN)]
    # a has learned of the transition (its pub/sub event arrived), and still did not
    # run its on_state_change for it.
    assert wait_for(lambda: len(events_a) == 1)
    assert events_a[0].new is State.OPEN
    with pytest.raises(CircuitOpenError):
        a.call(ok)
    assert seen_a == []


def test_subscribers_see_transitions_made_elsewhere(r: redis.Redis) -> None:
    """A process learns of a transition by pub/sub and refuses calls without asking Redis."""
    a = make(r, fail_max=1, reset_timeout=30)
    watcher_client = redis.Redis(connection_pool=r.connection_pool)
    b = make(watcher_client, fail_max=1, reset_timeout=30, sync_interval=60)
    events: list[Transition] = []
    b.subscribe(events.append)
    b.call(ok)  # binds b: its view is cached for 60 s and it is subscribed
    assert wait_for(lambda: _hub_connected(b))
    fail_n(a.call, 1)
    assert wait_for(lambda: len(events) == 1)
    assert events[0].new is State.OPEN and events[0].old is State.CLOSED
    assert 0 < events[0].retry_after <= 30
    before = script_calls(r)
    with pytest.raises(CircuitOpenError):
        b.call(ok)
    assert script_calls(r) == before


def _hub_connected(b: SharedBreaker) -> bool:
    return bool(hub_for(b.client).connected.is_set())


def test_closed_successes_cost_no_round_trip(r: redis.Redis) -> None:
    """In the closed state, successes are counted locally: 1000 calls, no round trip."""
    _probe = settle_hub(r)  # no subscription confirmed mid-count drops the cached view
    clock = VirtualClock()  # nor does the view's lease end on a stalled machine
    b = make(r, clock=clock, fail_max=5, sync_interval=60)
    b.call(ok)  # binds (scripts already loaded by the probe) and caches the view
    before = script_calls(r)
    for _ in range(1000):
        b.call(ok)
    assert script_calls(r) - before == 0
    # A failure costs exactly one round trip, and carries the pending successes along.
    fail_n(b.call, 1)
    assert script_calls(r) - before == 1


def test_pending_successes_are_flushed_and_counted(r: redis.Redis) -> None:
    """Locally counted successes reach the shared window with the next script call."""
    b = make(
        r,
        fail_max=None,
        window=CountWindow(100),
        minimum_calls=10,
        failure_rate_threshold=0.5,
        sync_interval=60,
    )
    for _ in range(30):
        b.call(ok)
    fail_n(b.call, 1)
    snap = b.snapshot()
    assert (snap.calls, snap.failures, snap.successes) == (31, 1, 30)


def test_max_pending_bounds_local_counting(r: redis.Redis) -> None:
    """After max_pending local successes, the next one flushes them."""
    _probe = settle_hub(r)  # no subscription confirmed mid-count drops the cached view
    clock = VirtualClock()  # nor does the view's lease end on a stalled machine
    b = make(r, clock=clock, fail_max=5, sync_interval=60, max_pending=10)
    b.call(ok)
    before = script_calls(r)
    for _ in range(100):
        b.call(ok)
    assert script_calls(r) - before == 10


def test_transition_is_one_script_call(r: redis.Redis) -> None:
    """The failure that trips costs one script call, which also makes the transition."""
    _probe = settle_hub(r)  # no subscription confirmed meanwhile drops the cached view
    clock = VirtualClock()  # nor does the view's lease end on a stalled machine
    b = make(r, clock=clock, fail_max=3)
    fail_n(b.call, 2)
    before = script_calls(r)
    fail_n(b.call, 1)
    assert script_calls(r) - before == 1
    assert b.snapshot().state is State.OPEN


def test_count_window_failure_rate(r: redis.Redis) -> None:
    """The failure rate over the last N calls trips once minimum_calls is reached."""
    b = make(r, fail_max=None, window=CountWindow(10), minimum_calls=4, failure_rate_threshold=0.5)
    b.call(ok)
    fail_n(b.call, 2)  # 2 of 3: below minimum_calls
    assert b.snapshot().state is State.CLOSED
    b.call(ok)
    fail_n(b.call, 1)  # 3 of 5 = 60%
    assert b.snapshot().state is State.OPEN


def test_time_window_and_slow_calls(r: redis.Redis) -> None:
    """Slow calls count toward the slow-call rate over a time window."""
    clock = VirtualClock()
    b = make(
        r,
        clock=clock,
        fail_max=None,
        window=TimeWindow(10),
        minimum_calls=3,
        failure_rate_threshold=0.9,
        slow_call_duration=0.5,
        slow_call_rate_threshold=0.6,
    )
    b.call(ok)
    b.call(clock.advance, 0.5)  # takes exactly slow_call_duration: not slow
    b.call(clock.advance, 0.75)  # slow: 1 of 3
    snap = b.snapshot()
    assert (snap.state, snap.calls, snap.slow_calls) == (State.CLOSED, 3, 1)
    b.call(clock.advance, 1)  # slow: 2 of 4 = 50%, below 60%
    assert b.snapshot().state is State.CLOSED
    b.call(clock.advance, 1)  # slow: 3 of 5 = 60%: trips
    assert b.snapshot().state is State.OPEN


def test_backoff_grows_the_open_period(r: redis.Redis) -> None:
    """Repeated trips lengthen the open period, up to the cap."""
    clock = VirtualClock()
    backoff = Backoff(multiplier=4, max=100, jitter=0)
    b = make(r, clock=clock, fail_max=1, reset_timeout=10, backoff=backoff)
    periods: list[float] = []
    for _ in range(3):
        fail_n(b.call, 1)  # the first failure trips; then each trial fails: trips again
        snap = b.snapshot()
        assert snap.state is State.OPEN
        periods.append(snap.retry_after)
        clock.advance(snap.retry_after)
    assert periods == [10, 40, 100]  # 10 x 4^(trips-1), capped at 100


def test_script_cache_flush_mid_run(r: redis.Redis) -> None:
    """After SCRIPT FLUSH, calls reload their scripts (NOSCRIPT) and keep working."""
    b = make(r, fail_max=3)
    fail_n(b.call, 1)
    r.script_flush()
    fail_n(b.call, 1)
    assert b.snapshot().consecutive_failures == 2


@pytest.mark.parametrize("name", ["a{b}c", "}{", "{", "naïve ☃", "new\nline", b"\x00\xff{"])
def test_odd_names_share_one_hash_tag(r: redis.Redis, name: str | bytes) -> None:
    """Names with braces or any byte work, and all their keys hash to one slot."""
    b = make(r, name, fail_max=2)
    fail_n(b.call, 2)
    assert b.snapshot().state is State.OPEN
    assert len({key_slot(k.encode()) for k in b.keys}) == 1
    assert make(r, "other", fail_max=2).snapshot().state is State.CLOSED


def test_keys_expire_when_idle(r: redis.Redis) -> None:
    """Every key of a breaker carries a TTL, refreshed on use."""
    b = make(r, fail_max=2, ttl=100)
    fail_n(b.call, 1)
    ttl = r.pttl(b.keys[0])
    assert 0 < ttl <= 100_000


def test_wrong_type_key(r: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    """A key of the wrong type: snapshot raises a clear error; calls follow the policy."""
    b = make(r, fail_max=2)
    r.rpush(b.keys[0], "not a hash")
    with pytest.raises(CorruptStateError, match="did not write"):
        b.snapshot()
    with caplog.at_level(logging.ERROR, logger="redisbreaker"):
        assert b.call(ok) == "ok"  # fail_open: the call runs
    assert any("did not write" in rec.getMessage() for rec in caplog.records)


def test_corrupt_state_field(r: redis.Redis) -> None:
    """A hash with an unknown state is reported, not trusted."""
    b = make(r, fail_max=2)
    r.hset(b.keys[0], "st", "weird")
    with pytest.raises(CorruptStateError, match="weird"):
        b.snapshot()


def test_configure_with_url_and_unix_socket(redis_server, r: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    """configure(url=...) sets the default client; unix:// sockets work."""
    redisbreaker.configure(url=redis_server.unix_url, prefix="app1:")
    b = SharedBreaker("via-socket", fail_max=1)
    fail_n(b.call, 1)
    assert b.keys[0].startswith("app1:")
    assert r.exists(b.keys[0]) == 1


def test_construction_needs_no_redis() -> None:
    """A breaker can be built at import time, before any Redis is configured."""
    b = SharedBreaker("early", fail_max=1)
    assert "early" in repr(b)


def test_breakers_and_transaction_waiters_share_one_subscriber(r: redis.Redis) -> None:
    """One process, one client: breakers and waiters use a single pub/sub connection."""
    import threading

    from redisbreaker import Outcome, Transaction

    client = redis.Redis(port=r.connection_pool.connection_kwargs["port"], client_name="one-sub")
    b = make(client, fail_max=1)
    b.call(ok)  # the breaker joins the hub
    tx = Transaction.begin(2, timeout=30, client=client)
    done: list[Outcome] = []
    waiter = threading.Thread(target=lambda: done.append(tx.wait(10).outcome))
    waiter.start()
    assert wait_for(lambda: tx.tally().yes == 0 and _subscribers(r) == 1)
    tx.vote(0, True)
    tx.vote(1, True)
    waiter.join(10)
    assert done == [Outcome.COMMIT]
    assert _subscribers(r) == 1


def _subscribers(r: redis.Redis) -> int:
    """Connections named 'one-sub' (this test's client) that hold subscriptions."""
    return sum(
        1 for c in r.client_list() if c.get("name") == "one-sub" and int(c.get("sub", 0)) > 0
    )
