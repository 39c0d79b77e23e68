"""Hypothesis: random votes, duplicates, late votes and clock steps against a reference model."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from redisbreaker.errors import NotAParticipantError, NotDecidedError
from redisbreaker.testing.servers import RedisServer
from redisbreaker.transaction import Decision, Outcome, Transaction

_ids = itertools.count()


class Model:
    """The rules in plain Python: the reference the Lua scripts must agree with."""

    def __init__(self, n: int, deadline: int) -> None:
        self.n = n
        self.deadline = deadline
        self.votes: dict[str, bool] = {}
        self.outcome = Outcome.PENDING
        self.acked: set[str] = set()

    def notice(self, now: int) -> None:
        if self.outcome is Outcome.PENDING and now >= self.deadline:
            self.outcome = Outcome.ROLLBACK

    def vote(self, p: str, ok: bool, now: int) -> None:
        self.notice(now)
        if self.outcome is not Outcome.PENDING or p in self.votes:
            return
        self.votes[p] = ok
        if not ok:
            self.outcome = Outcome.ROLLBACK
        elif sum(self.votes.values()) == self.n:
            self.outcome = Outcome.COMMIT


def make_machine(server: RedisServer) -> type[RuleBasedStateMachine]:
    client = server.client()

    class TxMachine(RuleBasedStateMachine):
        @initialize(n=st.integers(1, 5), timeout=st.integers(1, 5_000), named=st.booleans())
        def begin(self, n: int, timeout: int, named: bool) -> None:
            self.now = 1_700_000_000_000
            self.named = named
            self.ids = [f"p{i}" for i in range(n)]
            self.tx = Transaction.begin(
                self.ids if named else n,
                timeout=timeout / 1000,
                client=client,
                tx_id=f"model-{next(_ids)}",
                clock_ms=lambda: self.now,
            )
            self.model = Model(n, self.now + timeout)
            self.seen: list[Decision] = []

        def observe(self, d: Decision) -> None:
            self.seen.append(d)
            assert d.outcome is self.model.outcome, (d, self.model.votes)

        @rule(i=st.integers(0, 4), ok=st.booleans())
        def vote(self, i: int, ok: bool) -> None:
            p = self.ids[i % len(self.ids)]
            self.model.vote(p, ok, self.now)
            d = self.tx.vote(p, ok)
            self.observe(d)
            assert d.vote == self.model.votes.get(p)

        @precondition(lambda self: self.named)
        @rule()
        def outsider_vote(self) -> None:
            with pytest.raises(NotAParticipantError):
                self.tx.vote("outsider", True)

        @rule(ms=st.integers(0, 3_000))
        def clock_step(self, ms: int) -> None:
            self.now += ms

        @rule()
        def status(self) -> None:
            self.model.notice(self.now)
            self.observe(self.tx.status())

        @rule(i=st.integers(0, 4))
        def ack(self, i: int) -> None:
            p = self.ids[i % len(self.ids)]
            self.model.notice(self.now)
            if self.model.outcome is Outcome.PENDING:
                with pytest.raises(NotDecidedError):
                    self.tx.ack(p)
                return
            self.model.acked.add(p)
            d = self.tx.ack(p)
            self.observe(d)
            assert d.tally.acked == len(self.model.acked)

        @invariant()
        def one_decision_for_all(self) -> None:
            decided = {d.outcome for d in getattr(self, "seen", []) if d.decided}
            assert len(decided) <= 1
            if Outcome.COMMIT in decided:
                votes = self.model.votes
                assert len(votes) == self.model.n
                assert all(votes.values())

    return TxMachine


def test_transaction_matches_the_model(redis_server: RedisServer) -> None:
    """Lua and the reference model agree on every step; all observers see one decision."""
    machine = make_machine(redis_server)
    machine.TestCase.settings = settings(
        max_examples=150,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    machine.TestCase().runTest()
