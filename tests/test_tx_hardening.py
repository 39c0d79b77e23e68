"""Transactions under misuse and odd state (issue #9, defects 3 and 5-10), on real Redis.

The chaos drills (restart, freeze, eviction, many waiters) are in test_tx_chaos.py.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

import redisbreaker
from redisbreaker import tx_core as core
from redisbreaker.aio.transaction import Transaction as AioTransaction
from redisbreaker.config import async_client_from_url
from redisbreaker.errors import (
    ConfigurationError,
    CorruptStateError,
    StorageError,
    TransactionError,
)
from redisbreaker.events import hub_for
from redisbreaker.testing.servers import RedisServer
from redisbreaker.transaction import Decision, Outcome, Transaction
from tests.helpers import wait_for


def state_key(tx: Transaction) -> str:
    return tx.key


def evalsha_calls(r: redis.Redis) -> int:
    return int(r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


# -- 3. a partial state is refused, never decided -------------------------------------------


def test_live_transaction_has_no_ttl_and_a_decided_one_has_keep(r: redis.Redis) -> None:
    """A pending transaction is one hash without a TTL (volatile-* eviction never picks
    it); the decision gives it its ``keep``."""
    tx = Transaction.begin(["a", "b"], timeout=60, keep=100, client=r)
    assert r.keys("*") == [state_key(tx).encode()]
    assert r.ttl(state_key(tx)) == -1
    tx.vote("a", True)
    tx.vote("b", True)
    assert 0 < r.ttl(state_key(tx)) <= 100


@pytest.mark.parametrize("missing", ["v:a", "m:b", "yes", "deadline"])
def test_partial_state_is_corrupt_and_never_decided(r: redis.Redis, missing: str) -> None:
    """A field removed behind the library's back (as by a partial eviction) makes every
    call raise CorruptStateError naming the transaction, and nothing is written."""
    tx = Transaction.begin(["a", "b"], timeout=60, client=r)
    tx.vote("a", True)
    r.hdel(state_key(tx), missing)
    before = r.hgetall(state_key(tx))
    calls: list[Callable[[], object]] = [
        lambda: tx.vote("b", True),
        lambda: tx.vote("a", True),
        tx.status,
    ]
    for call in calls:
        with pytest.raises(CorruptStateError, match=repr(tx.id)):
            call()
    assert r.hgetall(state_key(tx)) == before
    assert before.get(b"outcome") == b"pending"


# -- 5. corrupt deadlines neither hang nor spin ---------------------------------------------


@pytest.mark.parametrize("deadline", ["nan", "1e300", "12345678901234567890", "-5", ""])
def test_corrupt_deadline_raises_at_once(r: redis.Redis, deadline: str) -> None:
    """A deadline the library did not write fails wait() with CorruptStateError on the
    first read, instead of waiting forever while polling."""
    tx = Transaction.begin(2, timeout=60, client=r)
    r.hset(state_key(tx), "deadline", deadline)
    calls = evalsha_calls(r)
    with pytest.raises(CorruptStateError, match="deadline"):
        tx.wait()
    assert evalsha_calls(r) - calls <= 2  # one status read (and a reload at most)


def test_waiting_never_polls_faster_than_its_floor() -> None:
    """Reads that keep finding the transaction pending past its deadline (a server clock
    behind ours, a flapping hub) are spaced by a floor that doubles, up to 1 s."""
    ctx = core.Context("t", grace=30.0)
    now = 1000.0
    pending = [
        b"ok",
        b"pending",
        b"",
        b"",
        b"",
        0,
        2,
        0,
        0,
        0,
        5000,
        5000,
        b"",
        0,
    ]  # deadline == server now: "decide at once", but it stays pending

    def read(at: float) -> core.Request[Decision]:
        return core.Request(
            ctx, "status", core.Call(core.script("tx_status"), []),
            lambda reply: core.parse_view("t", reply), at,
        )  # fmt: skip

    plan = core.Waiting(ctx, read(now), read, now, until=None)
    gaps: list[float] = []
    for _ in range(10):
        step = plan.next(now)
        while isinstance(step, core.Sleep):
            gaps.append(step.seconds)
            now += step.seconds
            plan.woke(None, now)
            step = plan.next(now)
        assert isinstance(step, core.Call)
        plan.replied(pending, now)
    assert gaps[0] >= core.MIN_POLL * 0.99
    assert all(b >= a * 0.99 for a, b in itertools.pairwise(gaps))
    assert max(gaps) <= core.BACKOFF_CAP + 1e-9
    assert sum(gaps) > 2.0  # ten reads took seconds, not the microseconds of a spin


# -- 6. bytes ids are the same transaction as their text --------------------------------------


def test_bytes_id_waiter_wakes_on_the_decision(r: redis.Redis) -> None:
    """A waiter holding the id as bytes is woken by the published decision (not at the
    deadline, 300 s away)."""
    tx = Transaction.begin(2, timeout=300, tx_id=b"bytes-id", client=r)
    assert tx.id == "bytes-id"
    waiter = Transaction(b"bytes-id", client=r)
    results: list[Decision] = []
    t = threading.Thread(target=lambda: results.append(waiter.wait()), daemon=True)
    t.start()
    assert wait_until_waiting(r, waiter)
    tx.vote(0, True)
    tx.vote(1, True)
    t.join(30)
    assert [d.outcome for d in results] == [Outcome.COMMIT]


def wait_until_waiting(r: redis.Redis, tx: Transaction) -> bool:
    """True once a waiter for ``tx`` is registered on the hub (the positive signal)."""
    dispatch = hub_for(r).dispatch
    return wait_for(lambda: bool(dispatch.listeners.get(tx.channel, {}).get(tx.id)))


# -- 7. inputs ----------------------------------------------------------------------------


@pytest.mark.parametrize("ok", ["False", "no", 0, 1, None])
def test_vote_ok_must_be_a_bool(r: redis.Redis, ok: Any) -> None:
    """A non-bool ``ok`` ("no" is truthy) is refused before anything is sent."""
    tx = Transaction.begin(2, timeout=60, client=r)
    with pytest.raises(ConfigurationError, match="ok must be True or False"):
        tx.vote(0, ok)
    assert tx.tally().yes == 0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda r: Transaction("job-\udcff", client=r), "transaction id"),
        (lambda r: Transaction.begin(["a", "b-\udcff"], timeout=5, client=r), "participant"),
        (lambda r: Transaction.begin(2, timeout=1e300, client=r), "timeout"),
        (lambda r: Transaction.begin(2, timeout=5, keep=1e300, client=r), "keep"),
        (lambda r: Transaction.begin(2, timeout=5, keep=float("nan"), client=r), "keep"),
        (lambda r: Transaction("x", client=r, grace=-1), "grace"),
    ],
)
def test_bad_inputs_are_refused_naming_them(r: redis.Redis, call: Any, match: str) -> None:
    """Ids that are not valid text and numbers Redis cannot hold fail at the API edge."""
    with pytest.raises(ConfigurationError, match=match):
        call(r)
    assert r.dbsize() == 0


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


def test_a_reason_that_cannot_be_printed_still_votes_no(r: redis.Redis) -> None:
    """participate() whose block raises an exception with a broken __str__ still votes
    no at once (the reason falls back to the type name); nobody waits for the deadline."""
    tx = Transaction.begin(["a", "b"], timeout=300, client=r)
    rolled: list[str] = []
    with (
        pytest.raises(Unprintable),
        tx.participate("a", commit=lambda: None, rollback=lambda: rolled.append("a")),
    ):
        raise Unprintable
    d = tx.status()
    assert d.outcome is Outcome.ROLLBACK
    assert d.participant == "a"
    assert "Unprintable" in (d.reason or "")
    assert rolled == ["a"]


def test_lone_surrogate_reason_is_recorded(r: redis.Redis) -> None:
    """A reason that is not valid UTF-8 is recorded escaped, not crashed on."""
    tx = Transaction.begin(2, timeout=60, client=r)
    d = tx.vote(0, False, reason="bad \udcff byte")
    assert d.outcome is Outcome.ROLLBACK
    assert d.reason == "bad \\udcff byte"


# -- 8. every check before the first write ------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [("n", "-1"), ("yes", "9"), ("outcome", "maybe")])
def test_corrupt_counts_are_refused_before_any_write(
    r: redis.Redis, field: str, value: str
) -> None:
    """A deciding vote on a tally with a corrupt field writes nothing and decides nothing."""
    tx = Transaction.begin(2, timeout=60, client=r)
    tx.vote(0, True)
    r.hset(state_key(tx), field, value)
    before = r.hgetall(state_key(tx))
    with pytest.raises(CorruptStateError, match=field):
        tx.vote(1, True)
    assert r.hgetall(state_key(tx)) == before


def test_deciding_vote_without_publish_permission_writes_nothing(
    r: redis.Redis, redis_server: Any
) -> None:
    """A user whose ACL denies PUBLISH gets a StorageError naming PUBLISH from the
    deciding vote, and the transaction is left exactly as it was (still pending)."""
    r.acl_setuser(
        "nopub", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
        commands=["+@all", "-publish"],
    )  # fmt: skip
    try:
        client = redis.Redis(port=redis_server.port, username="nopub", password="pw")
        tx = Transaction.begin(2, timeout=60, client=client)
        tx.vote(0, True)  # not deciding: no PUBLISH needed
        before = r.hgetall(state_key(tx))
        with pytest.raises(StorageError, match="PUBLISH") as info:
            tx.vote(1, True)
        assert not isinstance(info.value, CorruptStateError)
        assert r.hgetall(state_key(tx)) == before
        assert Transaction(tx.id, client=r).status().outcome is Outcome.PENDING
    finally:
        r.acl_deluser("nopub")


# -- 9. only the library's errors escape ------------------------------------------------------


def test_wrong_type_key_is_corrupt_state(r: redis.Redis) -> None:
    """A key of another type under the transaction's name: CorruptStateError (a
    StorageError), never a raw WRONGTYPE ResponseError, from every call."""
    tx = Transaction("wrongtype", client=r)
    r.set(state_key(tx), "not a hash")
    calls: list[Callable[[], object]] = [
        lambda: tx.vote(0, True),
        tx.status,
        lambda: tx.ack(0),
        lambda: tx.abort("x"),
    ]
    for call in calls:
        with pytest.raises(CorruptStateError, match="wrongtype"):
            call()
    with pytest.raises(CorruptStateError):
        Transaction.begin(2, timeout=5, tx_id="wrongtype", client=r)


def test_wrong_password_and_missing_permission_are_storage_errors(
    r: redis.Redis, redis_server: Any
) -> None:
    """Credentials Redis refuses, and an ACL without EVALSHA, raise StorageError at once
    (retrying cannot fix them), naming the transaction."""
    r.acl_setuser(
        "noeval", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
        commands=["+@all", "-evalsha", "-eval"],
    )  # fmt: skip
    try:
        bad_password = redis.Redis(port=redis_server.port, username="noeval", password="nope")
        no_eval = redis.Redis(port=redis_server.port, username="noeval", password="pw")
        for client in (bad_password, no_eval):
            tx = Transaction("creds", client=client, grace=60)
            with pytest.raises(StorageError, match="'creds'") as info:
                tx.status()
            assert type(info.value).__module__ == "redisbreaker.errors"
    finally:
        r.acl_deluser("noeval")


def test_out_of_memory_is_a_storage_error(r: redis.Redis) -> None:
    """With maxmemory reached under noeviction, begin raises StorageError saying so."""
    r.config_set("maxmemory", "1")
    try:
        with pytest.raises(StorageError, match="out of memory"):
            Transaction.begin(2, timeout=5, client=r)
    finally:
        r.config_set("maxmemory", "0")


def test_transaction_errors_are_exported() -> None:
    """Every transaction error can be caught from the top-level package."""
    for name in (
        "TransactionError", "UnknownTransactionError", "NotAParticipantError",
        "NotDecidedError", "TransactionExistsError", "TransactionUnavailableError",
        "TransactionInDoubtError",
    ):  # fmt: skip
        err = getattr(redisbreaker, name)
        assert issubclass(err, redisbreaker.RedisBreakerError)
        assert name in redisbreaker.__all__
    assert issubclass(redisbreaker.TransactionError, TransactionError)


# -- 10. the cost of a handle and of waiting ----------------------------------------------------


def test_handles_do_not_hash_scripts(r: redis.Redis) -> None:
    """Scripts are hashed once per process, not per Transaction handle."""
    Transaction.begin(2, timeout=5, client=r)
    before = core.script.cache_info().misses
    for i in range(100):
        Transaction(f"h{i}", client=r)  # a handle alone: no I/O, no hashing
        if i % 10 == 0:
            tx = Transaction.begin(2, timeout=5, tx_id=f"b{i}", client=r)
            Transaction(tx.id, client=r).vote(0, True)
            Transaction(tx.id, client=r).wait(0.01)
    assert core.script.cache_info().misses == before


def test_the_hub_forgets_a_transaction_when_its_last_waiter_leaves(r: redis.Redis) -> None:
    """After 200 transactions were waited on, the hub holds no entry for any of them."""
    hub = hub_for(r)
    for _ in range(200):
        tx = Transaction.begin(1, timeout=60, client=r)
        assert tx.vote_and_wait(0, True).outcome is Outcome.COMMIT
    channel = tx.channel
    assert hub.dispatch.listeners.get(channel, {}) == {}


def _yes_on_record(client: redis.Redis, tx: Transaction, n: int) -> bool:
    """True once ``n`` yes votes are on record (read with HGET: no script to count)."""
    return wait_for(lambda: int(client.hget(tx.key, "yes") or 0) == n, timeout=60)


def test_a_published_decision_wakes_waiters_without_a_read(private_redis: RedisServer) -> None:
    """30 threads vote_and_wait on a new hub, whose subscription is confirmed while they
    wait for it: each sends one EVALSHA, its vote, and the published decision wakes
    every one with no status read (counted with INFO commandstats, never timed)."""
    client = private_redis.client()
    warm = Transaction.begin(1, timeout=60, client=client)
    warm.vote(0, True)  # tx_vote loaded: no NOSCRIPT retry to count
    tx = Transaction.begin(31, timeout=300, client=client)
    results: list[Decision] = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(tx.vote_and_wait(i, True)))
        for i in range(30)
    ]
    before = evalsha_calls(client)
    for t in threads:
        t.start()
    assert _yes_on_record(client, tx, 30)
    time.sleep(0.2)  # past the 20 ms floor a re-read would wait for (none must come)
    tx.vote(30, True)
    for t in threads:
        t.join(60)
    assert [d.outcome for d in results] == [Outcome.COMMIT] * 30
    assert evalsha_calls(client) - before == 31  # 30 waiters' votes and the deciding one


def test_asyncio_waiters_woken_by_the_decision_read_nothing_more(
    private_redis: RedisServer,
) -> None:
    """The asyncio twin: 30 tasks vote_and_wait on a new loop's hub; one EVALSHA each."""
    sync = private_redis.client()

    async def main() -> list[Decision]:
        client = async_client_from_url(private_redis.url)
        warm = await AioTransaction.begin(1, timeout=60, client=client)
        await warm.vote(0, True)
        tx = await AioTransaction.begin(31, timeout=300, client=client)
        before = evalsha_calls(sync)
        waiting = [asyncio.ensure_future(tx.vote_and_wait(i, True)) for i in range(30)]
        while int(await client.hget(tx.key, "yes") or 0) < 30:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)  # as above
        await tx.vote(30, True)
        results = list(await asyncio.wait_for(asyncio.gather(*waiting), 60))
        assert evalsha_calls(sync) - before == 31
        await client.aclose()
        return results

    assert [d.outcome for d in asyncio.run(main())] == [Outcome.COMMIT] * 30
