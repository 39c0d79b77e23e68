"""Transaction vote tallies against a real redis-server: the rules, the tally, waking."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable

import fakeredis
import pytest
import redis

from redisbreaker import tx_core as core
from redisbreaker.aio.transaction import Transaction as AioTransaction
from redisbreaker.config import async_client_from_url, client_from_url
from redisbreaker.errors import (
    ConfigurationError,
    NotAParticipantError,
    NotDecidedError,
    TransactionExistsError,
    UnknownTransactionError,
)
from redisbreaker.testing.servers import RedisCluster, RedisServer
from redisbreaker.transaction import Outcome, Transaction
from tests.helpers import wait_for


def test_all_yes_commits(r: redis.Redis) -> None:
    """N yes votes decide COMMIT, and the reason says all voted yes."""
    tx = Transaction.begin(3, timeout=10, client=r)
    assert not tx.vote(0, True).decided
    assert not tx.vote(1, True).decided
    d = tx.vote(2, True)
    assert d.outcome is Outcome.COMMIT
    assert d.reason_kind == "votes"
    assert (d.tally.yes, d.tally.no, d.tally.waiting) == (3, 0, 0)


def test_one_no_rolls_back_at_once_with_reason(r: redis.Redis) -> None:
    """A single no vote decides ROLLBACK immediately, naming the participant and reason."""
    tx = Transaction.begin(100, timeout=10, client=r)
    for i in range(49):
        tx.vote(i, True)
    d = tx.vote(50, False, reason=ZeroDivisionError("division by zero"))
    assert d.outcome is Outcome.ROLLBACK
    assert d.participant == "50"
    assert d.reason == "ZeroDivisionError: division by zero"
    assert "participant '50' voted no" in d.describe()
    assert tx.vote(51, True).outcome is Outcome.ROLLBACK


def test_vote_is_idempotent_and_cannot_change(r: redis.Redis) -> None:
    """A re-vote returns the original vote and never changes the count or the decision."""
    tx = Transaction.begin(2, timeout=10, client=r)
    tx.vote("a", True)
    again = tx.vote("a", False, reason="changed my mind")
    assert again.vote is True
    assert not again.decided
    assert (again.tally.yes, again.tally.no) == (1, 0)


def test_decision_never_changes(r: redis.Redis) -> None:
    """After COMMIT, a late no vote and an abort leave the decision as it was."""
    tx = Transaction.begin(1, timeout=10, client=r)
    tx.vote(0, True)
    assert tx.vote(1, False).outcome is Outcome.COMMIT
    assert tx.abort("too late").outcome is Outcome.COMMIT


def test_deadline_rolls_back_whoever_notices(r: redis.Redis) -> None:
    """Past the deadline a late voter gets ROLLBACK with the counts; its vote is not taken."""
    clock = [1_000_000]
    tx = Transaction.begin(3, timeout=5, client=r, clock_ms=lambda: clock[0])
    tx.vote(0, True)
    clock[0] += 5_000
    d = tx.vote(1, True)
    assert d.outcome is Outcome.ROLLBACK
    assert d.reason_kind == "timeout"
    assert d.reason is not None
    assert "1 of 3 voted yes" in d.reason
    assert "2 never voted" in d.reason
    assert d.vote is None


def test_status_notices_the_deadline(r: redis.Redis) -> None:
    """A status read after the deadline decides ROLLBACK; no process had to wait for it."""
    clock = [0]
    tx = Transaction.begin(2, timeout=1, client=r, clock_ms=lambda: clock[0])
    assert not tx.status().decided
    clock[0] = 1_000
    assert tx.status().outcome is Outcome.ROLLBACK


def test_timeout_hint_is_part_of_the_reason(r: redis.Redis) -> None:
    """A launcher's hint (e.g. worker sizing) is appended when some never voted."""
    clock = [0]
    tx = Transaction.begin(
        2, timeout=1, client=r, clock_ms=lambda: clock[0], timeout_hint=core.BLOCKING_HINT
    )
    clock[0] = 2_000
    d = tx.status()
    assert d.reason is not None
    assert "fewer free worker slots than participants" in d.reason


def test_ack_cleans_up_and_tombstone_blocks_revival(r: redis.Redis) -> None:
    """The transaction is one key with no TTL until decided; after every ack it keeps the
    decision (TTL keep), payload included; a late vote gets it and adds nothing."""
    tx = Transaction.begin(2, timeout=10, client=r, payload=b"handlers")
    key = f"rb:tx{{{tx.id}}}:state"
    assert [k for k in r.keys("*") if tx.id.encode() in k] == [key.encode()]
    assert r.pttl(key) == -1
    tx.vote(0, True)
    tx.vote(1, True)
    assert 0 < r.pttl(key) <= core.DEFAULT_KEEP * 1000
    tx.ack(0)
    assert tx.ack(0).tally.acked == 1
    d = tx.ack(1)
    assert d.tally.acked == 2
    assert [k for k in r.keys("*") if tx.id.encode() in k] == [key.encode()]
    assert r.hget(key, "payload") == b"handlers"  # a late stage may need its handler
    late = tx.vote(7, False, reason="late")
    assert late.outcome is Outcome.COMMIT
    assert late.tally.yes == 2


def test_ack_errors(r: redis.Redis) -> None:
    """Acking before the decision, or as an outsider of a named set, raises."""
    tx = Transaction.begin(["x", "y"], timeout=10, client=r)
    with pytest.raises(NotDecidedError, match=tx.id):
        tx.ack("x")
    tx.vote("x", False)
    with pytest.raises(NotAParticipantError, match="'z'"):
        tx.ack("z")


@pytest.mark.parametrize(
    ("participants", "message"),
    [
        (0, "participants must be >= 1, got 0"),
        (-3, "participants must be >= 1, got -3"),
        ([], "at least one participant"),
        (["a", "a"], "repeated: \\['a'\\]"),
        (True, "participants must be an int >= 1"),
        ("abc", "sequence of ids"),
    ],
)
def test_bad_participants(r: redis.Redis, participants: object, message: str) -> None:
    """begin rejects a bad participant count or list, naming the value."""
    with pytest.raises(ConfigurationError, match=message):
        Transaction.begin(participants, timeout=1, client=r)  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), "5"])
def test_bad_timeout(r: redis.Redis, timeout: object) -> None:
    """begin rejects timeouts that are not positive finite numbers."""
    with pytest.raises(ConfigurationError, match="timeout must be"):
        Transaction.begin(2, timeout=timeout, client=r)  # type: ignore[arg-type]


def test_unknown_transaction(r: redis.Redis) -> None:
    """Voting, reading or acking an id that was never begun raises UnknownTransactionError."""
    tx = Transaction("nope", client=r)
    calls: list[Callable[[], object]] = [
        lambda: tx.vote(0, True),
        tx.status,
        lambda: tx.ack(0),
        tx.wait,
    ]
    for call in calls:
        with pytest.raises(UnknownTransactionError, match="'nope' is unknown"):
            call()


def test_outsider_vote_is_rejected_when_named(r: redis.Redis) -> None:
    """A named participant set refuses votes from ids outside it, before and after deciding."""
    tx = Transaction.begin(["db1", "db2"], timeout=10, client=r)
    with pytest.raises(NotAParticipantError, match="'db3'"):
        tx.vote("db3", True)
    tx.vote("db1", True)
    tx.vote("db2", True)
    with pytest.raises(NotAParticipantError):
        tx.vote("db3", True)


def test_begin_twice_is_refused(r: redis.Redis) -> None:
    """An id already in use (tally or tombstone) cannot be begun again."""
    tx = Transaction.begin(1, timeout=10, client=r, tx_id="same")
    with pytest.raises(TransactionExistsError):
        Transaction.begin(1, timeout=10, client=r, tx_id="same")
    tx.vote(0, True)
    tx.ack(0)
    with pytest.raises(TransactionExistsError):
        Transaction.begin(1, timeout=10, client=r, tx_id="same")


def test_bad_participant_id(r: redis.Redis) -> None:
    """Participant ids must be non-empty str or int."""
    tx = Transaction.begin(1, timeout=10, client=r)
    with pytest.raises(ConfigurationError, match="participant must be a str or int"):
        tx.vote(1.5, True)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="must not be empty"):
        tx.vote("", True)


def test_waiters_share_one_subscription_and_all_learn(r: redis.Redis, redis_url: str) -> None:
    """50 threads waiting in one process use one pub/sub connection and all see COMMIT."""
    client = client_from_url(redis_url)
    tx = Transaction.begin(51, timeout=60, client=client, prefix="one-sub:")
    results: list[core.Decision] = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(tx.vote_and_wait(i, True)))
        for i in range(50)
    ]
    for t in threads:
        t.start()
    assert wait_for(lambda: tx.tally().yes == 50, timeout=60)
    assert r.pubsub_numsub("one-sub:tx:events") == [(b"one-sub:tx:events", 1)]
    tx.vote(50, True)
    for t in threads:
        t.join(30)
    assert len(results) == 50
    assert {d.outcome for d in results} == {Outcome.COMMIT}


def test_wait_returns_pending_at_its_own_timeout(r: redis.Redis) -> None:
    """wait(timeout) shorter than the deadline returns the pending state."""
    tx = Transaction.begin(2, timeout=60, client=r)
    d = tx.wait(0.05)
    assert not d.decided
    assert d.tally.waiting == 2


def test_wait_without_timeout_ends_at_the_deadline(r: redis.Redis) -> None:
    """A lone waiter decides ROLLBACK itself when the deadline passes."""
    tx = Transaction.begin(2, timeout=0.2, client=r)
    tx.vote(0, True)
    d = tx.wait()
    assert d.outcome is Outcome.ROLLBACK
    assert d.reason_kind == "timeout"


@pytest.mark.parametrize("failing", [None, 2])
def test_participate_blocking_mode(r: redis.Redis, failing: int | None) -> None:
    """participate() commits when all succeed and rolls back everyone when one raises."""
    tx = Transaction.begin(4, timeout=30, client=r)
    log: dict[int, str] = {}

    def work(i: int) -> None:
        with (
            contextlib.suppress(ValueError),
            tx.participate(
                i,
                commit=lambda: log.__setitem__(i, "commit"),
                rollback=lambda: log.__setitem__(i, "rollback"),
            ),
        ):
            if i == failing:
                raise ValueError("boom")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    expected = "commit" if failing is None else "rollback"
    assert log == dict.fromkeys(range(4), expected)
    assert tx.status().tally.acked == 4


def test_decision_survives_aof_restart(private_redis: RedisServer) -> None:
    """A decision made before a crash and AOF replay is still there; acks then proceed."""
    client = private_redis.client()
    tx = Transaction.begin(2, timeout=30, client=client)
    tx.vote(0, True)
    tx.vote(1, False, reason="disk full")
    private_redis.restart()
    client = private_redis.client()
    tx = Transaction(tx.id, client=client)
    d = tx.status(1)
    assert d.outcome is Outcome.ROLLBACK
    assert d.reason == "disk full"
    assert d.vote is False
    tx.ack(0)
    assert tx.ack(1).tally.acked == 2


@pytest.mark.cluster
def test_on_redis_cluster(redis_cluster: RedisCluster) -> None:
    """Every script runs on a 3-master cluster, and waiters are woken there too."""
    client = client_from_url(redis_cluster.url)
    for name in ("a", "b{c}", "x" * 50):
        tx = Transaction.begin(2, timeout=30, client=client, tx_id=name + core.new_id())
        tx.vote(0, True)
        done: list[core.Decision] = []
        t = threading.Thread(target=lambda tx=tx, done=done: done.append(tx.wait(20)))
        t.start()
        tx.vote(1, True)
        t.join(20)
        assert done[0].outcome is Outcome.COMMIT
        tx.ack(0)
        tx.ack(1)
        assert tx.status().outcome is Outcome.COMMIT


def test_asyncio_twin(redis_url: str) -> None:
    """The asyncio Transaction follows the same rules and wakes its waiters."""

    async def main() -> None:
        client = async_client_from_url(redis_url)
        tx = await AioTransaction.begin(["a", "b", "c"], timeout=30, client=client)
        waits = [asyncio.create_task(tx.vote_and_wait(p, True)) for p in ("a", "b")]
        for _ in range(500):  # until both tasks have voted (no timing assumption)
            if (await tx.tally()).yes == 2:
                break
            await asyncio.sleep(0.01)
        assert (await tx.tally()).yes == 2
        await tx.vote("c", True)
        decisions = await asyncio.gather(*waits)
        assert {d.outcome for d in decisions} == {Outcome.COMMIT}
        with pytest.raises(NotAParticipantError):
            await tx.vote("z", True)
        for p in ("a", "b", "c"):
            await tx.ack(p)
        assert (await tx.vote("a", False)).outcome is Outcome.COMMIT
        tx2 = await AioTransaction.begin(2, timeout=0.2, client=client)
        assert (await tx2.wait()).outcome is Outcome.ROLLBACK
        await client.aclose()

    asyncio.run(main())


def test_fakeredis_quick() -> None:
    """The scripts run on fakeredis with Lua (no cmsgpack), for users' quick unit tests."""
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    tx = Transaction.begin(2, timeout=10, client=client)
    tx.vote(0, True)
    assert tx.vote(1, True).outcome is Outcome.COMMIT


def test_published_message_round_trips() -> None:
    """The Lua msgpack encoder's output parses back into the same decision fields."""
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    tx = Transaction.begin(300, timeout=10, client=client, clock_ms=lambda: 1_795_000_000_123)
    p = client.pubsub()  # type: ignore[no-untyped-call]  # fakeredis is untyped
    p.subscribe(tx.channel)
    assert p.get_message(timeout=1) is not None
    long_reason = "é" * 4_000  # 8000 bytes: a str16 in msgpack
    tx.vote("x" * 40, False, reason=long_reason)
    msg = p.get_message(timeout=1)
    assert msg is not None
    d = core.parse_message(msg["data"])
    assert d is not None
    assert (d.tx_id, d.outcome, d.participant) == (tx.id, Outcome.ROLLBACK, "x" * 40)
    assert d.reason == long_reason
    assert d.decided_at_ms == 1_795_000_000_123
    assert d.tally.participants == 300
    assert d.tally.deadline_ms == 1_795_000_010_123
