"""The background syncer (redisbreaker/syncer.py) on a real Redis: a process's busy
breakers are synced together, off the call path; idle ones cost nothing."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster as ClusterClient

from redisbreaker import SharedBreaker, stored
from redisbreaker.aio import SharedBreaker as AsyncSharedBreaker
from redisbreaker.breaker_core import BreakerCore
from redisbreaker.config import async_client_from_url
from redisbreaker.keys import KeySpace
from redisbreaker.options import BreakerOptions, TimeWindow
from redisbreaker.syncer import CHUNK, Registry, Syncer, syncer_for
from redisbreaker.testing.servers import RedisCluster, RedisServer
from tests.helpers import ok, wait_for


def _reply(st: str, gen: int, wait_ms: int) -> list[Any]:
    """A breaker script's reply (lua/lib/breaker.lua reply()) for state ``st``."""
    return [stored.encode({**stored.fresh(), "st": st, "gen": gen}), wait_ms, "", "allow", "", ""]


def _successes(breaker: SharedBreaker) -> int:
    """The fleet total in Redis, read without the breaker (its own snapshot() would
    refresh its view, and a fresh view is not due for a sync)."""
    r = breaker.client
    raw = r.get(breaker.keys[0])
    return 0 if raw is None else int(stored.decode(raw)["n_ok"])


def test_successes_reach_redis_with_no_further_call(r: redis.Redis) -> None:
    """A process that stops calling still carries its counted successes to Redis
    within about one sync_interval: the syncer flushes them, no call needed. Breakers
    nobody calls are never sent (their keys do not exist)."""
    busy = [SharedBreaker(f"bg-busy-{i}", client=r, sync_interval=0.2) for i in range(3)]
    idle = [SharedBreaker(f"bg-idle-{i}", client=r, sync_interval=0.2) for i in range(3)]
    for breaker in idle:
        breaker.connect()
    for breaker in busy:
        for _ in range(6):  # the first asks Redis (there is no view yet); each is counted here
            breaker.call(ok)
    assert all(b.core.pending == 6 for b in busy)
    assert wait_for(lambda: all(_successes(b) == 6 for b in busy), timeout=30)
    assert all(b.core.pending == 0 for b in busy)
    # The syncer has run (positive signal above); the idle breakers were never sent.
    assert not any(r.exists(*b.keys) for b in idle)


def test_turned_off_a_breaker_syncs_on_its_calls(r: redis.Redis) -> None:
    """With background_sync=False, counted successes wait for the breaker's next
    script call, as they did before the syncer."""
    quiet = SharedBreaker("bg-off", client=r, sync_interval=0.2, background_sync=False)
    witness = SharedBreaker("bg-witness", client=r, sync_interval=0.2)
    for breaker in (quiet, witness):
        for _ in range(4):
            breaker.call(ok)
    assert wait_for(lambda: _successes(witness) == 4, timeout=30)
    assert quiet.core.pending == 4
    assert _successes(quiet) == 0


def test_many_breakers_go_in_few_calls(r: redis.Redis) -> None:
    """More breakers than one call carries: every one is synced, in chunks."""
    breakers = [
        SharedBreaker(f"bg-many-{i}", client=r, sync_interval=0.3) for i in range(CHUNK + 7)
    ]
    for breaker in breakers:
        breaker.call(ok)
        breaker.call(ok)
    assert wait_for(lambda: all(_successes(b) == 2 for b in breakers), timeout=60)


def test_a_breaker_with_a_driven_clock_is_left_alone(r: redis.Redis) -> None:
    """set_clock (tests' virtual time) takes a breaker out of the syncer, whose ticks
    run on real time."""
    breaker = SharedBreaker("bg-clock", client=r)
    breaker.set_clock(lambda: 0.0, None)
    assert breaker.core.background is False


def test_the_syncer_reports_a_corrupt_breaker_and_syncs_the_others(r: redis.Redis) -> None:
    """One breaker's bad state is that breaker's error; the others in the same call
    are synced."""
    good = SharedBreaker("bg-good", client=r, sync_interval=0.2)
    bad = SharedBreaker("bg-bad", client=r, sync_interval=0.2)
    for breaker in (good, bad):
        breaker.call(ok)
    r.set(bad.keys[0], "bogus")
    for breaker in (good, bad):
        breaker.call(ok)
    assert wait_for(lambda: bad.core.errors >= 1, timeout=30)
    assert "CorruptStateError" in (bad.core.last_error or "")
    assert wait_for(lambda: _successes(good) == 2, timeout=30)


def test_due_only_when_counted_and_about_to_expire() -> None:
    """The registry's rule, without Redis: a breaker is due when its view ends within
    the lead and it counted something; not before its first view, not half-open, not
    in an outage, not while another thread sends."""
    core = BreakerCore("due", BreakerOptions(sync_interval=1.0), KeySpace.of("rb:", "cb", "due"))
    assert core.background_call(100.0, 0.25) is None  # no view yet
    core.apply(_reply("closed", 0, 0), 100.0)
    assert core.background_call(100.8, 0.25) is None  # nothing counted
    core.pending = 3
    assert core.background_call(100.5, 0.25) is None  # the view has 0.5 s left
    call = core.background_call(100.8, 0.25)
    assert call is not None and call.script == "breaker_report" and call.sender
    assert core.background_call(100.8, 0.25) is None  # it holds the sender role
    core.sent(keep=False)
    core.refused = 2
    core.apply(_reply("half_open", 1, 0), 101.0)
    assert core.background_call(101.9, 0.25) is None  # its calls ask Redis anyway
    core.apply(_reply("open", 2, 5000), 102.0)
    assert core.background_call(102.9, 0.25) is not None  # refused calls counted
    core.sent(keep=False)
    core.pending = 1
    core.outage_since = 100.0
    assert core.background_call(103.9, 0.25) is None


def test_the_tick_follows_the_shortest_interval(r: redis.Redis) -> None:
    breakers = [
        SharedBreaker("bg-tick-a", client=r, sync_interval=2.0),
        SharedBreaker("bg-tick-b", client=r, sync_interval=0.4),
    ]
    assert Registry().tick(breakers) == pytest.approx(0.04)
    assert Registry().tick([]) == 1.0
    breakers[0].connect()
    assert breakers[0] in syncer_for(r).registry.members()


async def _totals_once_flushed(
    client: Any, breakers: list[AsyncSharedBreaker], want: int
) -> list[int]:
    """Each breaker's fleet total in Redis, once every one is ``want`` (or after 30 s)."""
    for _ in range(3000):
        raws = [await client.get(b.keys[0]) for b in breakers]
        totals = [0 if raw is None else int(stored.decode(raw)["n_ok"]) for raw in raws]
        if totals == [want] * len(breakers):
            break
        await asyncio.sleep(0.01)
    return totals


def test_asyncio_breakers_are_synced_by_a_task(redis_url: str) -> None:
    async def main() -> tuple[int, int]:
        client = aredis.Redis.from_url(redis_url)
        try:
            breakers = [
                AsyncSharedBreaker(f"bg-aio-{i}", client=client, sync_interval=0.2)
                for i in range(3)
            ]

            async def fine() -> str:
                return "ok"

            for breaker in breakers:
                for _ in range(4):
                    await breaker.call(fine)
            pending = sum(b.core.pending for b in breakers)
            totals = await _totals_once_flushed(client, breakers, 4)
            return pending, sum(totals)
        finally:
            await client.aclose()

    pending, flushed = asyncio.run(main())
    assert pending == 12
    assert flushed == 12


def test_on_a_cluster_each_master_gets_one_pipeline(cc: ClusterClient) -> None:
    """On Redis Cluster each breaker is its own breaker_flush (its slot), pipelined per
    master; a master that lost the script (SCRIPT FLUSH) gets it again."""
    breakers = [SharedBreaker(f"bg-cluster-{i}", client=cc, sync_interval=0.2) for i in range(12)]
    assert len({cc.keyslot(b.keys[0]) for b in breakers}) > 1  # type: ignore[no-untyped-call]
    for breaker in breakers:
        for _ in range(3):
            breaker.call(ok)
    assert wait_for(lambda: all(_successes(b) == 3 for b in breakers), timeout=30)
    cc.script_flush()  # every master
    for breaker in breakers:
        breaker.call(ok)
    assert wait_for(lambda: all(_successes(b) == 4 for b in breakers), timeout=30)
    assert all(b.core.errors == 0 for b in breakers)


def test_asyncio_on_a_cluster(redis_cluster: RedisCluster) -> None:
    async def main() -> list[int]:
        client = async_client_from_url(redis_cluster.url)
        assert isinstance(client, AsyncRedisCluster)
        try:
            breakers = [
                AsyncSharedBreaker(f"bg-acluster-{i}", client=client, sync_interval=0.2)
                for i in range(6)
            ]

            async def fine() -> str:
                return "ok"

            for breaker in breakers:
                for _ in range(2):
                    await breaker.call(fine)
            await client.script_flush()
            for breaker in breakers:
                await breaker.call(fine)
            return await _totals_once_flushed(client, breakers, 3)
        finally:
            await client.aclose()

    redis_cluster.flushall()
    assert asyncio.run(main()) == [3] * 6


def _child_calls(breaker: SharedBreaker, done: Any) -> None:
    for _ in range(5):
        breaker.call(ok)
    done.put(breaker.core.pending)  # then the child waits; its own syncer flushes them
    time.sleep(60)


def test_a_forked_child_gets_its_own_syncer(redis_url: str) -> None:
    """The parent's syncer thread does not survive a fork; a breaker used before the
    fork syncs in the child through the child's own syncer."""
    ctx = mp.get_context("fork")
    breaker = SharedBreaker("bg-forked", client=redis.Redis.from_url(redis_url), sync_interval=0.2)
    breaker.call(ok)  # bound, and its one success flushed, in the parent
    assert wait_for(lambda: _successes(breaker) == 1, timeout=30)
    done = ctx.Queue()
    child = ctx.Process(target=_child_calls, args=(breaker, done), daemon=True)
    child.start()
    try:
        assert done.get(timeout=30) == 5
        assert wait_for(lambda: _successes(breaker) == 6, timeout=30)
    finally:
        child.kill()
        child.join(10)


def test_breakers_fall_into_step() -> None:
    """When one breaker is due, those past half their interval come along, so a
    process's busy breakers end up synced together (no Redis: the registry's rule)."""
    cores = []
    for i in range(3):
        core = BreakerCore(
            f"s{i}", BreakerOptions(sync_interval=1.0), KeySpace.of("rb:", "cb", f"s{i}")
        )
        core.apply(_reply("closed", 0, 0), 0.3 * i)
        core.pending = 1
        cores.append(core)

    class Fake:
        def __init__(self, core: BreakerCore) -> None:
            self.core = core
            self.options = core.options

    fakes = [Fake(core) for core in cores]
    for core in cores:
        core.now = lambda: 0.95
    due = Registry().due(fakes, 0.1)  # type: ignore[arg-type]
    # s0's view ends at 1.0 (due); s1's at 1.3 (past half: along); s2's at 1.6 (not).
    assert [b.core.name for b, _ in due] == ["s0", "s1"]


def test_cluster_rounds_resend_only_what_met_noscript() -> None:
    """A Cluster flush's second round (after loading the script) sends only the breakers
    whose master lacked it; there is no third."""
    from redis.exceptions import NoScriptError

    from redisbreaker.syncer import ClusterRounds

    class Fake:
        def __init__(self, name: str) -> None:
            self.core = BreakerCore(name, BreakerOptions(), KeySpace.of("rb:", "cb", name))

    chunk = [(Fake(n), Fake(n).core.flush_call()) for n in ("a", "b", "c")]
    rounds = ClusterRounds(chunk, "sha")  # type: ignore[arg-type]
    assert len(rounds.commands()) == 3
    assert rounds.take([["ra"], NoScriptError("NOSCRIPT"), ["rc"]]) is True
    assert [c[3] for c in rounds.commands()] == [*chunk[1][0].core.key_list[:1]]
    assert rounds.take([NoScriptError("NOSCRIPT")]) is False
    assert rounds.replies[0] == "ra" and rounds.replies[2] == "rc"
    assert isinstance(rounds.replies[1], NoScriptError)


def test_one_flush_reads_the_clock_once(private_redis: RedisServer) -> None:
    """breaker_flush shares one TIME across its breakers: time windows each need the
    clock, and the first breaker's read serves the rest (lua/breaker_flush.lua)."""
    r = private_redis.client()
    breakers = [
        SharedBreaker(f"bg-time-{i}", client=r, fail_max=None, window=TimeWindow(60),
                      failure_rate_threshold=0.5, background_sync=False)
        for i in range(3)
    ]  # fmt: skip
    syncer = Syncer(r)  # this test's own, never started: sync_due is the one flush
    for b in breakers:
        b.call(ok)
        b.core.background = True
        syncer.registry.add(b)
    r.config_resetstat()
    for b in breakers:
        b.call(ok)  # counted locally: the view is fresh
    assert syncer.sync_due(lead=1e9) == 3
    ran = {k.removeprefix("cmdstat_"): v["calls"] for k, v in r.info("commandstats").items()}
    assert ran.get("fcall") == 1 and ran.get("time") == 1
    assert all(_successes(b) == 2 for b in breakers)
