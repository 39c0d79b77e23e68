"""Issue 8: the breaker under odd use, concurrency, forks and large inputs (real Redis)."""

from __future__ import annotations

import gc
import inspect
import logging
import math
import multiprocessing as mp
import pickle
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import redisbreaker.aio
from redisbreaker import (
    CircuitOpenError,
    ConfigurationError,
    CountWindow,
    SharedBreaker,
    State,
    TimeWindow,
    scripts,
)
from redisbreaker.events import hub_for
from redisbreaker.options import BreakerOptions
from redisbreaker.state import Transition
from redisbreaker.testing import VirtualClock
from tests.helpers import Boom, boom, fail_n, ok, script_calls, settle_hub, wait_for


def client_of(r: redis.Redis) -> redis.Redis:
    """Another client of the same server: another 'process' as far as caching goes."""
    return redis.Redis(connection_pool=r.connection_pool)


def permits(r: redis.Redis, b: SharedBreaker) -> int:
    return int(r.zcard(b.keys[1]))


# -- 1. sync() and the max_pending flush never take a half-open permit ----------------------


def test_sync_on_an_expired_open_breaker_takes_no_permit(r: redis.Redis) -> None:
    """sync() past the open deadline leaves the permit for a real call, fleet-wide."""
    clock = VirtualClock()
    a = SharedBreaker("sync-permit", client=r, fail_max=1, reset_timeout=30, trial_lease=60)
    other = SharedBreaker("sync-permit", client=client_of(r), fail_max=1, reset_timeout=30)
    clock.attach(a, other)
    fail_n(a.call, 1)
    clock.advance(31)
    snap = a.sync()
    assert snap.state is State.OPEN and snap.retry_after == 0.0
    assert permits(r, a) == 0
    assert other.call(ok) == "ok"  # the trial is free for whoever calls first
    assert other.snapshot().state is State.CLOSED


def test_max_pending_flush_with_a_stale_view_takes_no_permit(r: redis.Redis) -> None:
    """A flush of local successes on a view that missed the trip never takes a permit."""
    clock = VirtualClock()
    stale = SharedBreaker("flush-permit", client=r, fail_max=1, reset_timeout=30,
                          max_pending=5, sync_interval=3600)  # fmt: skip
    other = SharedBreaker("flush-permit", client=client_of(r), fail_max=1, reset_timeout=30)
    clock.attach(stale, other)
    stale.call(ok)  # caches "closed" for an hour
    hub_for(r).remove(stale.core.channel, stale.core.keys.tag, stale)  # the event is lost
    fail_n(other.call, 1)
    clock.advance(31)
    for _ in range(10):
        # The first five run on the stale view and are flushed; the flush's reply shows
        # the breaker open past its deadline, so the sixth asks for (and gets) the trial,
        # which closes the breaker. No call is refused and no permit is left behind.
        assert stale.call(ok) == "ok"
    assert permits(r, stale) == 0
    assert other.snapshot().state is State.CLOSED
    # The other process hears the trial's transitions on pub/sub (the positive signal).
    assert wait_for(lambda: other.core.view is not None and other.core.view.state is State.CLOSED)
    assert other.call(ok) == "ok"


# -- 2. binding happens once, under a lock ----------------------------------------------------


@pytest.mark.parametrize("use_with", [True, False])
def test_first_concurrent_use_binds_once(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch, use_with: bool
) -> None:
    """Threads racing on a fresh breaker bind it once; no outcome is lost to the race."""
    joins: list[int] = []
    original = scripts.for_client

    def slow_for_client(client: Any, name: str) -> Any:
        if name == "breaker_admit":  # once per bind
            joins.append(1)
            time.sleep(0.05)  # widen the window in which a second binder would enter
        return original(client, name)

    monkeypatch.setattr(scripts, "for_client", slow_for_client)
    b = SharedBreaker("bind-race", client=r, fail_max=100)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def worker() -> None:
        barrier.wait()
        try:
            if use_with:
                with pytest.raises(Boom), b:
                    raise Boom()
            else:
                with pytest.raises(Boom):
                    b.call(boom)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert joins == [1]
    assert b.snapshot().consecutive_failures == 8


# -- 5. a recorded outcome costs O(1) in the window size ------------------------------------


def commands_run(r: redis.Redis) -> dict[str, int]:
    """Commands the server has run, by name: a script's own commands count under theirs."""
    stats = r.info("commandstats")
    return {k: v["calls"] for k, v in stats.items() if k != "cmdstat_info"}


def commands_of(r: redis.Redis, fn: Any) -> int:
    """How many commands (EVALSHA and the commands its script ran) ``fn()`` made Redis run."""
    before = commands_run(r)
    fn()
    after = commands_run(r)
    return sum(n - before.get(k, 0) for k, n in after.items())


def untrippable(name: str, r: redis.Redis, window: Any) -> SharedBreaker:
    """Every outcome is recorded in the window; only a slow-call rate could trip it."""
    return SharedBreaker(name, client=r, fail_max=None, window=window, minimum_calls=1,
                         slow_call_duration=60.0, slow_call_rate_threshold=1.0)  # fmt: skip


@pytest.fixture
def quiet(private_redis: Any) -> Iterator[redis.Redis]:
    """A server of the test's own, with the pub/sub hub settled: nothing else runs
    commands while a test counts them."""
    client = private_redis.client()
    probe = settle_hub(client)  # kept alive: the hub holds its listeners weakly
    yield client
    del probe


def test_time_window_first_call_after_a_long_idle_is_o1(quiet: redis.Redis) -> None:
    """A TimeWindow(86400) with buckets in 50 seconds, idle 80,000 s, then one failure:
    that call runs as many Redis commands as a failure in a busy window (no per-second
    or per-bucket loop), and the window holds exactly the outcomes of the last day."""
    clock = VirtualClock()
    b = untrippable("idle-day", quiet, TimeWindow(86_400))
    clock.attach(b)
    for _ in range(50):
        clock.advance(1)
        fail_n(b.call, 1)
    clock.advance(1)
    busy = commands_of(quiet, lambda: fail_n(b.call, 1))
    clock.advance(80_000)
    idle = commands_of(quiet, lambda: fail_n(b.call, 1))
    assert idle <= busy + 2, (idle, busy)  # + dropping the buckets that fell out: 2 commands
    assert b.snapshot().calls == 52
    clock.advance(86_399)  # everything but the newest failure falls out
    assert b.snapshot().calls == 1


def test_count_window_cost_does_not_grow_with_its_size(quiet: redis.Redis) -> None:
    """A failure in a full CountWindow(100000) runs the same commands as in a
    CountWindow(100), and the breaker's state stays small (the ring is its own key,
    written one slot at a time)."""
    costs = {}
    clock = VirtualClock()  # no view lease ends (and syncs) while the commands are counted
    for size in (100, 100_000):
        b = untrippable(f"ring-{size}", quiet, CountWindow(size))
        clock.attach(b)
        for _ in range(size):
            b.call(ok)
        b.sync()  # the window is full of successes
        fail_n(b.call, 1)
        costs[size] = commands_of(quiet, lambda b=b: fail_n(b.call, 1))
        snap = b.snapshot()
        assert (snap.calls, snap.failures) == (size, 2)
        state = b.keys[0]
        assert quiet.strlen(state) < 400  # the state does not hold the ring
    assert costs[100_000] == costs[100]


# -- 6. a count window smaller than minimum_calls --------------------------------------------


def test_count_window_smaller_than_minimum_calls_is_clamped(r: redis.Redis) -> None:
    """As resilience4j: minimum_calls becomes the window size, so the rate can trip."""
    options = BreakerOptions(fail_max=None, window=CountWindow(4), failure_rate_threshold=0.5)
    assert options.minimum_calls == 4
    b = SharedBreaker("small-window", client=r, fail_max=None, window=CountWindow(4),
                      minimum_calls=10, failure_rate_threshold=0.5)  # fmt: skip
    b.call(ok)
    b.call(ok)
    fail_n(b.call, 2)
    assert b.snapshot().state is State.OPEN


# -- 7. a breaker bound before fork rejoins pub/sub in the child --------------------------------


def _child_sees_event(url: str, b: SharedBreaker, ready: Any, done: Any) -> None:
    seen: list[Transition] = []
    b.subscribe(seen.append)
    b.call(ok)  # the first call in the child joins the child's hub
    connected = wait_for(lambda: hub_for(b.client).connected.is_set(), 10)
    b.call(ok)  # the confirmed subscription dropped the view: take the fresh one now
    ready.set()
    got = wait_for(lambda: any(t.new is State.OPEN for t in seen), 10)
    done.put((connected, got))


def test_breaker_bound_before_fork_gets_events_in_the_child(redis_url: str) -> None:
    """A child of a fork learns transitions by pub/sub, not by the sync_interval fallback."""
    ctx = mp.get_context("fork")
    b = SharedBreaker("forked", client=redis.Redis.from_url(redis_url), fail_max=1,
                      reset_timeout=60, sync_interval=3600)  # fmt: skip
    b.call(ok)  # bound (and subscribed) in the parent
    ready, done = ctx.Event(), ctx.Queue()
    child = ctx.Process(target=_child_sees_event, args=(redis_url, b, ready, done))
    child.start()
    assert ready.wait(30)
    other = SharedBreaker("forked", client=redis.Redis.from_url(redis_url), fail_max=1,
                          reset_timeout=60)  # fmt: skip
    fail_n(other.call, 1)
    assert done.get(timeout=30) == (True, True)
    child.join(30)
    assert child.exitcode == 0


# -- 9 and 10. option names, the asyncio signature, pickling -----------------------------------


def test_unknown_option_names_the_option_and_the_valid_ones() -> None:
    """A misspelt option raises ConfigurationError naming it and listing the real ones."""
    with pytest.raises(ConfigurationError, match=r"'fial_max'.*fail_max, window"):
        SharedBreaker("typo", fial_max=3)  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match="'fial_max'"):
        redisbreaker.aio.SharedBreaker("typo", fial_max=3)  # type: ignore[call-arg]


def test_async_breaker_has_the_sync_signature() -> None:
    """redisbreaker.aio.SharedBreaker takes exactly the sync class's typed arguments."""
    sync_sig = inspect.signature(SharedBreaker.__init__)
    async_sig = inspect.signature(redisbreaker.aio.SharedBreaker.__init__)
    assert async_sig == sync_sig
    assert "fail_max" not in sync_sig.parameters and "settings" in sync_sig.parameters


def _use_pickled(payload: bytes, out: Any) -> None:
    b = pickle.loads(payload)
    try:
        b.call(boom)
    except Boom:
        pass
    out.put((b.name, b.keys, b.snapshot().consecutive_failures))


def test_pickled_breaker_binds_in_its_own_process(
    redis_url: str, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A breaker pickles by name, prefix and options; a spawned copy shares the state."""
    monkeypatch.setenv("REDISBREAKER_URL", redis_url)
    b = SharedBreaker(b"bin\xff", prefix="pk:", client=r, fail_max=7, reset_timeout=12)
    b.call(ok)  # bound here: a lock, a client and a hub that cannot travel
    fail_n(b.call, 1)
    copy = pickle.loads(pickle.dumps(b))
    assert copy.keys == b.keys and copy.options == b.options
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_use_pickled, args=(pickle.dumps(b), out))
    child.start()
    name, keys, consecutive = out.get(timeout=60)
    child.join(30)
    assert (name, keys, consecutive) == (b.name, b.keys, 2)


# -- 11. exceptions that match neither record nor ignore ------------------------------------


def test_unmatched_exception_counts_as_a_success(r: redis.Redis) -> None:
    """As pybreaker, purgatory and resilience4j: it resets the consecutive count."""
    b = SharedBreaker("unmatched", client=r, fail_max=3, record=Boom, ignore=KeyError)
    fail_n(b.call, 2)
    with pytest.raises(KeyError):
        b.call(_raise(KeyError("ignored")))
    assert b.snapshot().consecutive_failures == 2  # ignored: counts as nothing
    with pytest.raises(ValueError, match="unmatched"):
        b.call(_raise(ValueError("unmatched")))
    fail_n(b.call, 2)
    snap = b.snapshot()
    assert snap.consecutive_failures == 2 and snap.state is State.CLOSED


def test_interrupted_trial_neither_closes_nor_reopens(r: redis.Redis) -> None:
    """A KeyboardInterrupt in a half-open trial hands the permit back and records nothing."""
    clock = VirtualClock()
    b = SharedBreaker("interrupted", client=r, fail_max=1, reset_timeout=30)
    clock.attach(b)
    fail_n(b.call, 1)
    clock.advance(31)
    with pytest.raises(KeyboardInterrupt):
        b.call(_raise(KeyboardInterrupt()))
    assert b.snapshot().state is State.HALF_OPEN
    assert permits(r, b) == 0
    assert b.call(ok) == "ok"
    assert b.snapshot().state is State.CLOSED


def _raise(exc: BaseException) -> Any:
    def fn() -> None:
        raise exc

    return fn


# -- 12. names: encoded length, lone surrogates ----------------------------------------------


def test_name_limit_counts_utf8_bytes() -> None:
    """The 1024 limit is in bytes of UTF-8: 341 euro signs fit, 342 do not."""
    SharedBreaker("€" * 341, fail_max=1)
    with pytest.raises(ConfigurationError, match="1026 bytes"):
        SharedBreaker("€" * 342, fail_max=1)


def test_lone_surrogate_name_is_refused_at_construction() -> None:
    """A str that is not valid Unicode text fails at construction, not on every call."""
    with pytest.raises(ConfigurationError, match="not valid Unicode"):
        SharedBreaker("job-\udcff", fail_max=1)
    SharedBreaker(b"job-\xff", fail_max=1)  # bytes are the way to name binary breakers


# -- 13. "consecutive" is exact across a process's threads -------------------------------------


def test_consecutive_is_exact_across_threads(r: redis.Redis) -> None:
    """4 threads, each failing every 5th call: no run of 5 failures, so no trip."""
    b = SharedBreaker("threads-consecutive", client=r, fail_max=5, reset_timeout=60)
    b.call(ok)

    def worker() -> None:
        for i in range(1500):
            if i % 5 == 4:
                with pytest.raises(Boom):
                    b.call(boom)
            else:
                b.call(ok)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    snap = b.sync()
    assert snap.state is State.CLOSED and snap.trips == 0
    assert snap.consecutive_failures <= 4


# -- 14. events reach exactly the breaker they concern -------------------------------------------


def test_events_do_not_cross_between_lookalike_names(r: redis.Redis) -> None:
    """The event of b'\\xff' never reaches the distinct breaker named '\\\\xff'."""
    raw = SharedBreaker(b"\xff", client=r, fail_max=1, reset_timeout=60)
    lookalike = SharedBreaker("\\xff", client=client_of(r), fail_max=1, reset_timeout=60,
                              sync_interval=3600)  # fmt: skip
    seen_raw: list[Transition] = []
    seen_other: list[Transition] = []
    raw.subscribe(seen_raw.append)
    lookalike.subscribe(seen_other.append)
    lookalike.call(ok)
    raw.call(ok)
    assert wait_for(lambda: hub_for(r).connected.is_set() and hub_for(client_of(r)) is not None)
    assert wait_for(lambda: hub_for(lookalike.client).connected.is_set())
    fail_n(raw.call, 1)
    assert wait_for(lambda: len(seen_raw) == 1)  # the event has been delivered
    assert seen_other == []
    before = script_calls(r)
    lookalike.sync()
    assert lookalike.call(ok) == "ok"
    assert script_calls(r) - before == 1  # only the sync: the cached view is closed


# -- 15. operator inputs ---------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [-5, 0, 1e-9, True, math.nan, math.inf, None, "5", 1e300, [1]])
def test_open_validates_seconds(r: redis.Redis, seconds: Any) -> None:
    """open(seconds) refuses anything but a number in [0.001, one year], naming it."""
    b = SharedBreaker("operator", client=r, fail_max=1)
    with pytest.raises(ConfigurationError, match=r"open\(seconds\)"):
        b.open(seconds)
    assert r.exists(b.keys[0]) == 0  # nothing reached Redis


def test_celery_pause_validates_seconds() -> None:
    """redisbreaker.celery.pause(seconds=...) validates like open()."""
    from celery import Celery

    from redisbreaker.celery import pause

    app = Celery("v", broker="memory://")
    app.conf.redisbreaker_url = "redis://127.0.0.1:1/0"
    for bad in (math.nan, math.inf, 0, True, "5"):
        with pytest.raises(ConfigurationError, match="seconds"):
            pause(app, seconds=bad)  # type: ignore[arg-type]  # the bad values are the point


# -- 18. the hub forgets names nobody listens to --------------------------------------------


def test_hub_forgets_breakers_that_are_gone(r: redis.Redis) -> None:
    """Entries for dropped breakers are swept: memory follows live breakers, not history."""
    client = client_of(r)
    keep = SharedBreaker("kept", client=client, fail_max=1)
    keep.call(ok)
    for i in range(1000):
        SharedBreaker(f"transient-{i}", client=client, fail_max=1).call(ok)
    gc.collect()
    SharedBreaker("one-more", client=client, fail_max=1).call(ok)  # an add sweeps
    assert hub_for(client).dispatch.size() <= 64


# -- 8. two processes, one name, different settings -----------------------------------------


def test_different_settings_warn_once_naming_them(
    r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A process whose settings differ from the stored ones logs one WARNING naming them."""
    a = SharedBreaker("fight", client=r, fail_max=5, reset_timeout=30)
    b = SharedBreaker("fight", client=client_of(r), fail_max=3, reset_timeout=30)
    fail_n(a.call, 1)
    with caplog.at_level(logging.WARNING, logger="redisbreaker"):
        fail_n(b.call, 2)
    warnings = [x.getMessage() for x in caplog.records if "different settings" in x.getMessage()]
    assert len(warnings) == 1
    assert "fail_max: here 3, there 5" in warnings[0]
    assert a.snapshot().fingerprint == b.options.fingerprint()  # b wrote last
    assert a.options.fingerprint() != b.options.fingerprint()


def test_closed_call_after_open_is_refused_locally(r: redis.Redis) -> None:
    """The failure that trips caches the open deadline: the next call costs no round trip."""
    _probe = settle_hub(r)  # no subscription confirmed later drops the cached view
    b = SharedBreaker("trip-cache", client=r, fail_max=1, reset_timeout=60)
    fail_n(b.call, 1)
    before = script_calls(r)
    with pytest.raises(CircuitOpenError) as info:
        b.call(ok)
    assert script_calls(r) == before
    assert 50 < info.value.retry_after <= 60
