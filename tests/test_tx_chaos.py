"""Transactions on a real redis-server that restarts, freezes, evicts or runs short of
connections: all-or-nothing must hold (issue #9, defects 1-4)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from redisbreaker.aio.transaction import Transaction as AioTransaction
from redisbreaker.config import async_client_from_url, client_from_url
from redisbreaker.errors import StorageError, TransactionInDoubtError
from redisbreaker.testing.servers import RedisServer
from redisbreaker.transaction import Decision, Outcome, Transaction
from tests.helpers import started, wait_for


class CountingRedis(redis.Redis):
    """A client that counts script calls sent and answered (to wait for positive signals)."""

    sent = 0
    answered = 0

    def evalsha(self, *args: Any, **kwargs: Any) -> Any:
        self.sent += 1
        reply = super().evalsha(*args, **kwargs)
        self.answered += 1
        return reply


def counting_client(server: RedisServer, timeout: float = 0.5) -> CountingRedis:
    """Like the clients the library builds: no retry inside redis-py, blocking pool."""
    pool = redis.BlockingConnectionPool(  # type: ignore[no-untyped-call]  # untyped in redis-py
        port=server.port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        max_connections=50,
        retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
    )
    return CountingRedis(connection_pool=pool)


@contextlib.contextmanager
def frozen(server: RedisServer) -> Iterator[None]:
    """SIGSTOP the server for the block (the kernel still accepts its connections)."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def _participant(
    tx: Transaction, p: str, dbs: dict[str, str], errors: list[BaseException]
) -> threading.Thread:
    def run() -> None:
        try:
            with tx.participate(
                p,
                commit=lambda: dbs.__setitem__(p, "commit"),
                rollback=lambda: dbs.__setitem__(p, "rollback"),
            ):
                dbs[p] = "open"  # the work, inside the database transaction
        except BaseException as exc:  # recorded for the assertion below
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("run", range(3))
def test_restart_between_votes_and_decision_splits_nothing(
    private_redis: RedisServer, run: int
) -> None:
    """A Redis restart (AOF) while participants wait in participate() ends with every
    database applying the decision; the deciding vote alternates COMMIT and ROLLBACK."""
    client = client_from_url(private_redis.url, socket_timeout=1, socket_connect_timeout=1)
    tx = Transaction.begin(["a", "b", "c", "d"], timeout=60, client=client)
    dbs: dict[str, str] = {}
    errors: list[BaseException] = []
    threads = [_participant(tx, p, dbs, errors) for p in ("a", "b", "c")]
    assert wait_for(lambda: tx.tally().yes == 3, timeout=30)
    private_redis.restart()
    last_ok = run % 2 == 0
    decision = tx.vote("d", last_ok)
    for t in threads:
        t.join(60)
    assert not errors
    expected = "commit" if last_ok else "rollback"
    assert decision.outcome is (Outcome.COMMIT if last_ok else Outcome.ROLLBACK)
    assert dbs == dict.fromkeys("abc", expected)
    assert tx.status().tally.acked == 3


def test_asyncio_waiter_learns_the_decision_across_a_restart(private_redis: RedisServer) -> None:
    """An asyncio vote_and_wait keeps trying through a restart and gets the decision."""

    async def main() -> Decision:
        client = async_client_from_url(
            private_redis.url, socket_timeout=1, socket_connect_timeout=1
        )
        tx = await AioTransaction.begin(2, timeout=60, client=client)
        waiting = asyncio.create_task(tx.vote_and_wait(0, True))
        for _ in range(3000):  # until the vote is on record (bounded)
            if (await tx.tally()).yes == 1:
                break
            await asyncio.sleep(0.01)
        await asyncio.to_thread(private_redis.restart)
        await tx.vote(1, True)
        decision = await asyncio.wait_for(waiting, 60)
        await client.aclose()
        return decision

    assert asyncio.run(main()).outcome is Outcome.COMMIT


def test_vote_during_a_freeze_returns_the_recorded_vote(private_redis: RedisServer) -> None:
    """Votes sent into a frozen Redis (SIGSTOP, past the socket timeout) are retried and
    return the vote on record once it resumes; each counts once; nobody gets an error."""
    client = counting_client(private_redis, timeout=0.3)
    tx = Transaction.begin(3, timeout=120, client=client)
    results: dict[int, Decision] = {}
    errors: list[BaseException] = []

    def vote(i: int) -> None:
        try:
            results[i] = tx.vote(i, True)
        except BaseException as exc:  # recorded for the assertion below
            errors.append(exc)

    sent_before = client.sent
    with frozen(private_redis):
        threads = [threading.Thread(target=vote, args=(i,), daemon=True) for i in range(3)]
        for t in threads:
            t.start()
        # Each vote was sent, timed out, and is being sent again: its fate was unknown.
        assert wait_for(lambda: client.sent - sent_before >= 6, timeout=30)
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(results) == [0, 1, 2]
    assert all(d.vote is True for d in results.values())
    final = tx.status()
    assert final.outcome is Outcome.COMMIT
    assert (final.tally.yes, final.tally.no) == (3, 0)


def test_participant_waits_through_a_freeze(private_redis: RedisServer) -> None:
    """A participant waiting while Redis is frozen (its reads time out) still applies the
    decision made after Redis resumes."""
    client = counting_client(private_redis, timeout=0.3)
    tx = Transaction.begin(["a", "b"], timeout=120, client=client)
    dbs: dict[str, str] = {}
    errors: list[BaseException] = []
    t = _participant(tx, "a", dbs, errors)
    assert wait_for(lambda: tx.tally().yes == 1, timeout=30)
    with frozen(private_redis):
        tx_b = Transaction(tx.id, client=counting_client(private_redis, timeout=0.3))
        voter = threading.Thread(target=lambda: tx_b.vote("b", True), daemon=True)
        voter.start()
        assert wait_for(lambda: tx_b.client.sent >= 2, timeout=30)
    voter.join(60)
    t.join(60)
    assert not errors
    assert dbs == {"a": "commit"}


def test_in_doubt_rule_when_redis_stays_down(private_redis: RedisServer) -> None:
    """Redis down past the deadline plus the grace: participate() calls neither commit nor
    rollback, does not ack, and raises TransactionInDoubtError; run again with the same
    id once Redis is back, it learns the decision and applies it."""
    client = client_from_url(private_redis.url, socket_timeout=0.3, socket_connect_timeout=0.3)
    tx = Transaction.begin(["a", "b"], timeout=1, client=client)
    dbs: dict[str, str] = {}
    errors: list[BaseException] = []
    waiting = Transaction(tx.id, client=client, grace=0.5)
    t = _participant(waiting, "a", dbs, errors)
    assert wait_for(lambda: tx.tally().yes == 1, timeout=30)
    private_redis.kill()
    t.join(60)
    assert len(errors) == 1
    assert isinstance(errors[0], TransactionInDoubtError)
    assert isinstance(errors[0], StorageError)
    assert errors[0].participant == "a"
    assert dbs == {"a": "open"}  # neither commit nor rollback
    private_redis.start()
    seen = tx.status("a")
    assert seen.vote is True
    assert not seen.acked
    assert seen.tally.acked == 0  # the operator sees who is in doubt
    errors.clear()
    _participant(Transaction(tx.id, client=client), "a", dbs, errors).join(60)
    assert not errors
    assert dbs == {"a": "rollback"}  # b never voted: ROLLBACK at the deadline
    assert tx.status("a").acked


def _evicting_server() -> RedisServer:
    return started(RedisServer(extra=["--maxmemory", "3mb", "--maxmemory-policy", "volatile-lru"]))


def test_eviction_never_commits_without_every_vote() -> None:
    """Under volatile-lru pressure from filler keys with TTLs, a transaction whose
    participant "b" never votes is never decided COMMIT, named or counted, even when
    "a" votes again and again; live transactions are not evicted."""
    server = _evicting_server()
    try:
        r = server.client()
        filler = b"x" * 20_000
        outcomes: list[Outcome] = []
        storage_errors = 0
        for i in range(150):
            participants: list[str] | int = ["a", "b"] if i % 2 else 2
            try:
                tx = Transaction.begin(participants, timeout=600, client=r)
                for j in range(4):
                    r.set(f"filler:{i}:{j}", filler, ex=3600)
                    tx.vote("a", True)  # redelivered: must count once
                outcomes.append(tx.status().outcome)
                assert tx.tally().yes == 1
            except StorageError:  # out of memory with nothing left to evict
                storage_errors += 1
        assert r.info("stats")["evicted_keys"] > 0
        assert Outcome.COMMIT not in outcomes
        assert len(outcomes) > 100, storage_errors
    finally:
        server.stop()


def test_250_threads_wait_on_one_transaction(redis_url: str) -> None:
    """250 threads in one process vote_and_wait on one 250-participant transaction with
    the library's client (blocking pool of 100): all learn COMMIT, none errs."""
    client = client_from_url(redis_url)
    _many_waiters(client, 250)


def test_waiters_survive_a_small_non_blocking_pool(redis_server: RedisServer) -> None:
    """With a user's client whose pool raises MaxConnectionsError, the calls are retried
    (waiting holds no connection): 120 threads all learn COMMIT."""
    client = redis.Redis(port=redis_server.port, max_connections=8, socket_timeout=5)
    _many_waiters(client, 120)


def _many_waiters(client: Any, n: int) -> None:
    tx = Transaction.begin(n, timeout=300, client=client)
    results: list[Decision] = []
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results.append(tx.vote_and_wait(i, True))
        except BaseException as exc:  # recorded for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    assert len(results) == n
    assert {d.outcome for d in results} == {Outcome.COMMIT}
