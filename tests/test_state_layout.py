"""The breaker's stored state (layout 3, one string): what a script writes is what
redisbreaker/stored.py reads, a hash of the layout before it is carried over, and the
TTL is refreshed on the cadence save() documents."""

from __future__ import annotations

import pytest
import redis

from redisbreaker import ConfigurationError, CorruptStateError, SharedBreaker, State, stored
from redisbreaker.breaker_core import BreakerCore
from redisbreaker.fleet import Fleet
from redisbreaker.keys import KeySpace
from redisbreaker.options import BreakerOptions, CountWindow
from redisbreaker.testing.servers import RedisServer
from tests.helpers import fail_n, ok


def test_the_state_is_one_string_python_reads(r: redis.Redis) -> None:
    b = SharedBreaker("layout", client=r, fail_max=5)
    b.call(ok)
    b.sync()
    fail_n(b.call, 2)
    raw = r.get(b.keys[0])
    assert isinstance(raw, bytes)
    s = stored.decode(raw)
    assert (s["st"], s["consec"], s["n_ok"], s["n_fail"]) == ("closed", 2, 1, 2)
    assert s["cfg"] == b.core.options.settings_text
    assert stored.encode(s) == raw


def test_a_hash_of_the_old_layout_is_carried_over(r: redis.Redis) -> None:
    """An open breaker written by a version before layout 3 stays open, with its
    generation, counts and reason, and is rewritten as one string on first use; the
    listing shows it before that."""
    options = BreakerOptions(fail_max=3, reset_timeout=600)
    key = KeySpace.of("rb:", "cb", "legacy").key("s")
    now_ms = int(r.time()[0]) * 1000
    r.hset(key, mapping={
        "st": "open", "gen": 4, "until": now_ms + 300_000, "trips": 1, "consec": 0,
        "n_ok": 7, "n_fail": 3, "n_trips": 1, "opened": now_ms, "wk": "0:0:2",
        "cfg": options.settings_text, "why": "consecutive", "why_text": "3 consecutive failures",
        "why_err": "ValueError: down", "why_by": "host:1", "why_at": now_ms,
    })  # fmt: skip
    listed = Fleet(r).breaker("legacy")
    assert listed.state is State.OPEN and listed.totals.successful == 7
    b = SharedBreaker("legacy", client=r, fail_max=3, reset_timeout=600)
    snap = b.snapshot()
    assert (snap.state, snap.generation, snap.totals.failed) == (State.OPEN, 4, 3)
    assert snap.reason is not None and snap.reason.error == "ValueError: down"
    assert r.type(key) == b"string" and r.pttl(key) > 0
    assert Fleet(r).breaker("legacy").state is State.OPEN


def test_a_garbled_state_is_corrupt_not_reset(r: redis.Redis) -> None:
    b = SharedBreaker("garbled", client=r, fail_max=2)
    b.call(ok)
    b.sync()
    r.set(b.keys[0], b"\x03\x01short")
    with pytest.raises(CorruptStateError, match="not a breaker state"):
        b.snapshot()
    fail_n(b.call, 1)  # fail_open: the call runs, and counts the error
    assert "CorruptStateError" in (b.core.last_error or "")
    assert r.get(b.keys[0]) == b"\x03\x01short"  # nothing written


def test_the_ttl_is_refreshed_on_the_first_call_then_every_tenth_of_it(r: redis.Redis) -> None:
    b = SharedBreaker(
        "ttl",
        client=r,
        fail_max=100,
        ttl=1000,
        window=CountWindow(10),
        failure_rate_threshold=0.99,
        minimum_calls=1000,
    )
    fail_n(b.call, 1)  # the first call: state, and the ring it created, get the TTL
    for key in (b.keys[0], b.keys[3]):
        assert 990_000 < r.pttl(key) <= 1_000_000
    r.pexpire(b.keys[0], 500_000)
    r.pexpire(b.keys[3], 500_000)
    fail_n(b.call, 1)  # within ttl/10 of the last refresh: the TTLs are kept
    assert r.pttl(b.keys[0]) <= 500_000 and r.pttl(b.keys[3]) <= 500_000
    b.core.ttl_refresh_at = 0.0  # as if ttl/10 had passed
    fail_n(b.call, 1)
    for key in (b.keys[0], b.keys[3]):
        assert 990_000 < r.pttl(key) <= 1_000_000


def test_a_transition_always_sets_the_ttl(r: redis.Redis) -> None:
    """Opening adds the open period to the TTL, whoever's turn it is to refresh."""
    b = SharedBreaker("ttl-open", client=r, fail_max=2, ttl=1000, reset_timeout=500)
    fail_n(b.call, 1)
    r.pexpire(b.keys[0], 100_000)
    fail_n(b.call, 1)
    assert b.snapshot().state is State.OPEN
    assert 1_400_000 < r.pttl(b.keys[0]) <= 1_500_000 * 1.1


def test_a_client_that_decodes_responses_is_refused(redis_server: RedisServer) -> None:
    client = redis_server.client(decode_responses=True)
    b = SharedBreaker("decoding", client=client, fail_max=2)
    with pytest.raises(ConfigurationError, match="decode_responses=True"):
        b.call(ok)
    client.close()


def test_a_failed_call_makes_the_next_one_refresh_the_ttl() -> None:
    """The call that failed may have been the one to refresh the TTL (pure core)."""
    core = BreakerCore("ttl-core", BreakerOptions(ttl=1000), KeySpace.of("rb:", "cb", "ttl-core"))
    assert core.ttl_due() and not core.ttl_due()
    core.storage_failed(redis.ConnectionError("refused"), 0.0)
    assert core.ttl_due() and not core.ttl_due()


def test_the_listing_skips_a_state_key_it_cannot_read(r: redis.Redis) -> None:
    fail_n(SharedBreaker("listed", client=r, fail_max=2).call, 1)
    r.rpush(KeySpace.of("rb:", "cb", "a-list").key("s"), "x")
    r.set(KeySpace.of("rb:", "cb", "garbage").key("s"), "x")
    assert [b.name for b in Fleet(r).breakers()] == ["listed"]


def test_a_failure_that_trips_nothing_reads_and_writes_the_state_only(
    private_redis: RedisServer,
) -> None:
    """The fast path (lua/lib/outcomes.lua closed_tally): in the closed state of a
    breaker with no window, a recorded failure that trips nothing is one GET and one
    SET inside its FCALL (no TIME, no TTL, no ACL check: it publishes nothing). The
    trip takes the whole machine."""
    r = private_redis.client()
    b = SharedBreaker("fast", client=r, fail_max=4, background_sync=False)
    fail_n(b.call, 1)  # the process's first call refreshes the TTL: the whole machine
    r.config_resetstat()
    fail_n(b.call, 2)
    ran = {k.removeprefix("cmdstat_"): v["calls"] for k, v in r.info("commandstats").items()}
    assert (ran.get("fcall"), ran.get("get"), ran.get("set")) == (2, 2, 2)
    assert not {"time", "pexpire", "publish"} & set(ran)
    raw = r.get(b.keys[0])
    assert isinstance(raw, bytes) and stored.decode(raw)["consec"] == 3
    fail_n(b.call, 1)  # the fourth consecutive failure trips
    ran = {k.removeprefix("cmdstat_"): v["calls"] for k, v in r.info("commandstats").items()}
    assert ran.get("publish") == 1 and ran.get("time", 0) >= 1
    assert b.snapshot().state is State.OPEN
