"""Participants that die (SIGKILL) before voting or before acking; dispatchers that die."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import redis

from redisbreaker.testing.servers import RedisServer
from redisbreaker.transaction import Decision, Outcome, Transaction
from tests.helpers import wait_for

_PARTICIPANT = """
import sys, time, redis
from redisbreaker.transaction import Transaction
tx = Transaction(sys.argv[1], client=redis.Redis(port=int(sys.argv[2])))
if sys.argv[4] == "vote":
    tx.vote(sys.argv[3], True)
print("ready", flush=True)
time.sleep(600)  # doing its commit work, until it is killed
"""


def _spawn(tx_id: str, port: int, participant: str, action: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _PARTICIPANT, tx_id, str(port), participant, action],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_killed_participants_roll_back_at_the_deadline(
    redis_server: RedisServer, r: redis.Redis
) -> None:
    """One killed after voting yes, one before voting: the rest roll back at the deadline,
    the decision stays readable, and a redelivered participant gets it, not a new vote."""
    # The deadline passes when the test says so (not after a wall-clock window that a
    # loaded machine could overrun while starting the participants).
    skew = [0]

    def clock() -> int:
        return int(time.time() * 1000) + skew[0]

    tx = Transaction.begin(["voter", "silent", "a", "b"], timeout=60, client=r, clock_ms=clock)
    voter = _spawn(tx.id, redis_server.port, "voter", "vote")
    silent = _spawn(tx.id, redis_server.port, "silent", "none")
    for proc in (voter, silent):
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    seen: list[Decision] = []
    waiters = [
        threading.Thread(target=lambda p=p: seen.append(tx.vote_and_wait(p, True)))
        for p in ("a", "b")
    ]
    for t in waiters:
        t.start()
    assert wait_for(lambda: tx.tally().yes == 3, 30)  # a and b voted and wait
    skew[0] = 61_000
    assert tx.status().outcome is Outcome.ROLLBACK  # this read notices the deadline
    for t in waiters:
        t.join(30)
    assert [d.outcome for d in seen] == [Outcome.ROLLBACK, Outcome.ROLLBACK]
    d = tx.status()
    assert d.reason_kind == "timeout"
    assert (d.tally.yes, d.tally.no, d.tally.waiting) == (3, 0, 1)
    assert d.reason is not None
    assert "3 of 4 voted yes" in d.reason

    # Redelivered: the killed voter runs again and votes; it gets the decision back.
    again = tx.vote("voter", True)
    assert again.outcome is Outcome.ROLLBACK
    assert again.vote is True
    assert tx.vote("silent", True).vote is None
    assert tx.status().tally.yes == 3
    for p in ("voter", "silent", "a", "b"):
        tx.ack(p)
    assert tx.status("voter").outcome is Outcome.ROLLBACK


def test_dispatch_claim_is_taken_over_after_the_holder_dies(r: redis.Redis) -> None:
    """A dispatcher that dies mid-dispatch keeps the claim only for its lease; the next
    claimer gets exactly the participants whose handlers were not sent."""
    skew = [0]  # the lease ends when the test says so, not after a 200 ms window

    def clock() -> int:
        return int(time.time() * 1000) + skew[0]

    tx = Transaction.begin([str(i) for i in range(5)], timeout=60, client=r, payload=b"h",
                           clock_ms=clock)  # fmt: skip
    assert tx.claim_dispatch("early").code == "not_decided"
    tx.vote("3", False, reason="no")
    first = tx.claim_dispatch("first", lease_ms=30_000)
    assert first.granted
    assert sorted(first.pending) == ["0", "1", "2", "3", "4"]
    assert first.payload == b"h"
    assert tx.record_dispatched("first", ["0", "1"], lease_ms=30_000) == (True, False)
    # "first" dies here. While its lease runs, nobody else may dispatch.
    assert not tx.claim_dispatch("second").granted
    skew[0] = 31_000
    second = tx.claim_dispatch("second")
    assert second.granted
    assert sorted(second.pending) == ["2", "3", "4"]
    assert tx.record_dispatched("first", ["2"]) == (False, False)  # the dead one lost its claim
    assert tx.record_dispatched("second", ["2", "3", "4"]) == (True, True)
    assert tx.claim_dispatch("third").done
