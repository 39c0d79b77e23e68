"""Transaction vote tallies: N participants commit together or roll back together.

Redis is the coordinator: the tally lives under one hash tag and every rule is
decided inside a Lua script with the server's clock, so there is no coordinator
process to lose. See ``docs/transactions.md`` for the rules and the Celery modes.

::

    tx = Transaction.begin(participants=100, timeout=30)
    # in each participant, anywhere in the fleet:
    tx = Transaction(tx_id)
    decision = tx.vote_and_wait(i, ok=True)
    conn.commit() if decision.committed else conn.rollback()
    tx.ack(i)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from redisbreaker import _txcore as core
from redisbreaker._tx_waiters import DEGRADED_STEP, hub_for
from redisbreaker._txcore import Claim, Decision, Outcome, ParticipantId, Tally
from redisbreaker.config import SyncClient, default_client, default_prefix
from redisbreaker.scripts import register

__all__ = ["Decision", "Outcome", "Participation", "Tally", "Transaction"]

_SCRIPTS = ("tx_begin", "tx_vote", "tx_status", "tx_abort", "tx_ack", "tx_claim", "tx_dispatched")


@dataclass
class Participation:
    """What :meth:`Transaction.participate` learned: the decision, once it is known."""

    tx: object  # the sync or asyncio Transaction it belongs to
    participant: str
    decision: Decision | None = None

    @property
    def committed(self) -> bool:
        return self.decision is not None and self.decision.committed


class Transaction:
    """A handle on one transaction's tally; anyone holding the id can make one.

    All options are keyword-only. ``client`` defaults to
    :func:`redisbreaker.config.default_client`, ``prefix`` to the configured prefix.
    """

    def __init__(
        self, tx_id: str, *, client: SyncClient | None = None, prefix: str | None = None
    ) -> None:
        self.id = tx_id
        self._client: Any = client if client is not None else default_client()
        self._keys = core.Keys.of(prefix if prefix is not None else default_prefix(), tx_id)
        self._scripts = {name: register(self._client, name) for name in _SCRIPTS}
        # Tests replace this with a virtual clock (ms); None means the server's TIME.
        self._clock_ms: core.ClockMs | None = None

    def __repr__(self) -> str:
        return f"<Transaction {self.id!r}>"

    def _call(self, name: str, *args: object) -> Any:
        return self._scripts[name](
            keys=list(self._keys.keys), args=self._keys.args(self._clock_ms, *args)
        )

    # --- lifecycle ------------------------------------------------------------------

    @classmethod
    def begin(
        cls,
        participants: int | Sequence[ParticipantId],
        *,
        timeout: float,
        tx_id: str | None = None,
        keep: float = core.DEFAULT_KEEP,
        client: SyncClient | None = None,
        prefix: str | None = None,
        payload: bytes = b"",
        timeout_hint: str = "",
        clock_ms: core.ClockMs | None = None,
    ) -> Transaction:
        """Create a transaction of ``participants`` (a count, or their ids).

        ``timeout`` (seconds, server clock) is the deadline for all votes; ``keep``
        how long the decision outlives it. Naming the participants makes votes from
        anyone else an error. ``payload`` is opaque bytes kept with the tally for
        integrations (the Celery callback mode stores its handlers there).
        """
        n, names = core.validate_participants(participants)
        ms = core.timeout_ms(timeout)
        keep_ms = core.timeout_ms(keep, "keep")
        tx = cls(tx_id if tx_id is not None else core.new_id(), client=client, prefix=prefix)
        tx._clock_ms = clock_ms
        reply = tx._scripts["tx_begin"](
            keys=list(tx._keys.keys),
            args=core.begin_args(tx._keys, clock_ms, n, names, ms, keep_ms, payload, timeout_hint),
        )
        core.parse_view(tx.id, reply)
        return tx

    def vote(self, participant: ParticipantId, ok: bool, *, reason: object = None) -> Decision:
        """Record ``participant``'s vote (the first one counts); return the state after it.

        A redelivered participant voting again gets the current decision and its
        original vote back in ``Decision.vote``, never a second vote.
        """
        p = core.participant_id(participant)
        reply = self._call("tx_vote", p, "1" if ok else "0", core.reason_text(reason))
        return core.parse_view(self.id, reply, p)

    def status(self, participant: ParticipantId | None = None) -> Decision:
        """The decision and tally now; decides ROLLBACK if the deadline has passed."""
        p = core.participant_id(participant) if participant is not None else ""
        return core.parse_view(self.id, self._call("tx_status", p), p or None)

    def tally(self) -> Tally:
        """Voted yes, voted no, waiting, acked (see :class:`Tally`)."""
        return self.status().tally

    def abort(self, reason: object) -> Decision:
        """Decide ROLLBACK now (unless already decided) with ``reason``."""
        return core.parse_view(self.id, self._call("tx_abort", core.reason_text(reason)))

    def ack(self, participant: ParticipantId) -> Decision:
        """Report ``participant``'s commit or rollback done; the last ack cleans up."""
        p = core.participant_id(participant)
        return core.parse_view(self.id, self._call("tx_ack", p), p)

    # --- waiting --------------------------------------------------------------------

    def wait(
        self, timeout: float | None = None, *, participant: ParticipantId | None = None
    ) -> Decision:
        """Block until the transaction is decided, or ``timeout`` seconds have passed.

        With no timeout it returns at the latest just after the deadline, when its
        own status read decides ROLLBACK if nobody else has. A still-pending result
        is only possible when ``timeout`` is given and runs out first.
        """
        return self._wait(None, timeout, participant)

    def vote_and_wait(
        self,
        participant: ParticipantId,
        ok: bool,
        *,
        reason: object = None,
        timeout: float | None = None,
    ) -> Decision:
        """Vote, then wait for the decision (subscribed before voting, so nothing is missed)."""
        return self._wait((participant, ok, reason), timeout, participant)

    def _wait(
        self,
        vote: tuple[ParticipantId, bool, object] | None,
        timeout: float | None,
        participant: ParticipantId | None,
    ) -> Decision:
        limit = core.timeout_ms(timeout) if timeout is not None else None
        hub = hub_for(self._client, self._keys.channel)
        with hub.waiting(self.id) as waiter:
            if vote is not None:
                decision = self.vote(vote[0], vote[1], reason=vote[2])
            else:
                decision = self.status(participant)
            until = decision.tally.now_ms + limit if limit is not None else None
            while (step := core.wait_step(decision, until)) is not None:
                if not hub.ready.is_set():
                    step = min(step, DEGRADED_STEP)
                waiter.event.wait(step)
                published = waiter.take()
                if published is not None:
                    return published
                decision = self.status(participant)
            return decision

    # --- blocking participation -----------------------------------------------------

    @contextlib.contextmanager
    def participate(
        self,
        participant: ParticipantId,
        *,
        commit: Callable[[], object],
        rollback: Callable[[], object],
    ) -> Iterator[Participation]:
        """Blocking mode: do the work in the block; vote, wait, commit or roll back, ack.

        An exception in the block votes no (its text is the reason), rolls back and
        re-raises. Otherwise the participant votes yes and waits for the decision
        (at most until just after the deadline), then calls ``commit`` or
        ``rollback`` and acks. If ``commit`` raises, the participant does not ack.
        """
        p = core.participant_id(participant)
        result = Participation(self, p)
        try:
            yield result
        except BaseException as exc:
            try:
                result.decision = self.vote(p, False, reason=exc)
            finally:
                rollback()
            result.decision = self.ack(p)
            raise
        decision = self.vote_and_wait(p, True)
        if decision.committed:
            commit()
        else:
            rollback()
        self.ack(p)
        result.decision = decision

    # --- handler dispatch (callback mode) -------------------------------------------

    def _claim(self, token: str, lease_ms: int = core.DEFAULT_CLAIM_LEASE_MS) -> Claim:
        return core.parse_claim(self.id, self._call("tx_claim", token, lease_ms))

    def _dispatched(
        self, token: str, participants: Sequence[str], lease_ms: int = core.DEFAULT_CLAIM_LEASE_MS
    ) -> tuple[bool, bool]:
        held, done = self._call("tx_dispatched", token, lease_ms, *participants)
        return bool(held), bool(done)
