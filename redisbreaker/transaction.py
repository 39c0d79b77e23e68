"""Transaction vote tallies: N participants commit together or roll back together.

Redis is the coordinator: the whole transaction is one hash and every rule is
decided inside a Lua script with the server's clock, so there is no coordinator
process to lose. See the README's "Transactions" section for the rules and the
Celery modes.

::

    tx = Transaction.begin(participants=100, timeout=30)
    # in each participant, anywhere in the fleet:
    tx = Transaction(tx_id)
    decision = tx.vote_and_wait(i, ok=True)
    conn.commit() if decision.committed else conn.rollback()
    tx.ack(i)

This module is the thread shell: it runs the plans of :mod:`redisbreaker.tx_core`
(which decide every retry, sleep and parse) with blocking I/O.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.exceptions

from redisbreaker import tx_core as core
from redisbreaker.config import SyncClient, default_client, default_prefix
from redisbreaker.errors import StorageError, TransactionError
from redisbreaker.tx_core import Claim, Decision, Outcome, ParticipantId, Tally
from redisbreaker.tx_waiters import Waiter, hub_for

__all__ = ["Decision", "Outcome", "Participation", "Tally", "Transaction"]

T = TypeVar("T")


@dataclass
class Participation:
    """What :meth:`Transaction.participate` learned: the decision, once it is known.

    ``acked`` is False when the ack could not be recorded (logged; the outcome was
    applied all the same, and the tally's ``acked`` shows the participant missing).
    """

    tx: object  # the sync or asyncio Transaction it belongs to
    participant: str
    decision: Decision | None = None
    acked: bool = False

    @property
    def committed(self) -> bool:
        return self.decision is not None and self.decision.committed


class Transaction(core.TxBase):
    """A handle on one transaction; anyone holding the id can make one (no I/O).

    All options are keyword-only. ``client`` defaults to
    :func:`redisbreaker.config.default_client`, ``prefix`` to the configured prefix.
    ``grace`` is how long (seconds) after the transaction's deadline a call keeps
    retrying while Redis does not answer, before it raises
    :class:`~redisbreaker.errors.TransactionUnavailableError`.
    """

    def __init__(
        self,
        tx_id: str | bytes,
        *,
        client: SyncClient | None = None,
        prefix: str | None = None,
        grace: float = core.DEFAULT_GRACE,
    ) -> None:
        self._setup(tx_id, prefix if prefix is not None else default_prefix(), grace, client)

    def _default_client(self) -> Any:
        return default_client()

    def __repr__(self) -> str:
        return f"<Transaction {self.id!r}>"

    def _eval(self, call: core.Call) -> Any:
        try:
            return self._client.evalsha(call.script.sha, 1, self._keys.key, *call.args)
        except redis.exceptions.NoScriptError:
            self._client.script_load(call.script.text)
            return self._client.evalsha(call.script.sha, 1, self._keys.key, *call.args)

    def _run(self, plan: core.Plan[T], waiter: Waiter | None = None) -> T:
        ready = waiter.ready if waiter is not None else None
        while True:
            step = plan.next(time.monotonic(), ready is None or ready.is_set())
            if isinstance(step, core.Done):
                return step.value
            if isinstance(step, core.Call):
                try:
                    reply = self._eval(step)
                except Exception as exc:
                    plan.failed(exc, time.monotonic())
                else:
                    plan.replied(reply, time.monotonic())
            elif waiter is None:
                time.sleep(step.seconds)
            else:
                waiter.event.wait(step.seconds)
                plan.woke(waiter.take(), time.monotonic())

    # --- lifecycle ------------------------------------------------------------------

    @classmethod
    def begin(
        cls,
        participants: int | Sequence[ParticipantId],
        *,
        timeout: float,
        tx_id: str | bytes | None = None,
        keep: float = core.DEFAULT_KEEP,
        client: SyncClient | None = None,
        prefix: str | None = None,
        payload: bytes = b"",
        timeout_hint: str = "",
        clock_ms: core.ClockMs | None = None,
        grace: float = core.DEFAULT_GRACE,
    ) -> Transaction:
        """Create a transaction of ``participants`` (a count, or their ids).

        ``timeout`` (seconds, server clock) is the deadline for all votes; ``keep``
        how long the decision is kept. Naming the participants makes votes from
        anyone else an error. ``payload`` is opaque bytes kept with the tally for
        integrations (the Celery callback mode stores its handlers there).
        """
        settings = core.begin_settings(participants, timeout, keep, payload, timeout_hint)
        tx = cls(
            tx_id if tx_id is not None else core.new_id(), client=client, prefix=prefix, grace=grace
        )
        tx._clock_ms = clock_ms
        s = settings
        tx._run(
            tx._begin_plan(
                s.n, s.names, s.timeout_ms, s.keep_ms, s.payload, s.hint, time.monotonic()
            )
        )
        return tx

    def vote(self, participant: ParticipantId, ok: bool, *, reason: object = None) -> Decision:
        """Record ``participant``'s vote (the first one counts); return the state after it.

        A redelivered participant voting again gets the current decision and its
        original vote back in ``Decision.vote``, never a second vote. A vote whose
        reply is lost is sent again until answered, so the vote returned is the one
        on record.
        """
        return self._run(self._vote_plan(participant, ok, reason, time.monotonic(), None))

    def status(self, participant: ParticipantId | None = None) -> Decision:
        """The decision and tally now; decides ROLLBACK if the deadline has passed."""
        p = core.participant_id(participant) if participant is not None else None
        return self._run(self._status_plan(p, time.monotonic()))

    def tally(self) -> Tally:
        """Voted yes, voted no, waiting, acked (see :class:`Tally`)."""
        return self.status().tally

    def abort(self, reason: object) -> Decision:
        """Decide ROLLBACK now (unless already decided) with ``reason``."""
        return self._run(self._abort_plan(reason, time.monotonic()))

    def ack(self, participant: ParticipantId) -> Decision:
        """Report ``participant``'s commit or rollback done (counted once)."""
        return self._run(self._ack_plan(participant, time.monotonic()))

    # --- waiting --------------------------------------------------------------------

    def wait(
        self, timeout: float | None = None, *, participant: ParticipantId | None = None
    ) -> Decision:
        """Block until the transaction is decided, or ``timeout`` seconds have passed.

        With no timeout it returns at the latest just after the deadline, when its
        own status read decides ROLLBACK if nobody else has. A still-pending result
        is only possible when ``timeout`` is given and runs out first. While Redis
        does not answer it keeps trying, until the deadline plus ``grace`` (or its
        ``timeout``), then raises ``TransactionUnavailableError``.
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
        vote: tuple[object, object, object] | None,
        timeout: float | None,
        participant: ParticipantId | None,
    ) -> Decision:
        plan = self._wait_plan(vote, timeout, participant, time.monotonic())
        with hub_for(self._client, self._keys.channel).waiting(self.id) as waiter:
            return self._run(plan, waiter)

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
        re-raises. Otherwise the participant votes yes and waits for the decision,
        then calls ``commit`` or ``rollback`` and acks. If ``commit`` raises, the
        participant does not ack. If the decision cannot be learned (Redis
        unreachable past the deadline plus ``grace``), it calls neither and raises
        :class:`~redisbreaker.errors.TransactionInDoubtError` (see the README).
        """
        p = core.participant_id(participant)
        result = Participation(self, p)
        try:
            yield result
        except BaseException as exc:
            try:
                with core.logged(self.id, p, "no vote"):
                    result.decision = self.vote(p, False, reason=exc)
            finally:
                rollback()
            with core.logged(self.id, p, "ack"):
                result.decision = self.ack(p)
                result.acked = True
            raise
        try:
            decision = self.vote_and_wait(p, True)
        except (TransactionError, StorageError) as exc:
            raise core.in_doubt(self.id, p, exc) from exc
        result.decision = decision
        commit() if decision.committed else rollback()
        with core.logged(self.id, p, "ack"):
            result.decision = self.ack(p)
            result.acked = True

    # --- handler dispatch (callback mode) -------------------------------------------

    def payload(self) -> tuple[Outcome, bytes]:
        """The outcome so far and the ``payload`` given at :meth:`begin`."""
        return self._run(self._payload_plan(time.monotonic()))

    def _claim(self, token: str, lease_ms: int = core.DEFAULT_CLAIM_LEASE_MS) -> Claim:
        return self._run(self._claim_plan(token, lease_ms, time.monotonic()))

    def _dispatched(
        self, token: str, participants: Sequence[str], lease_ms: int = core.DEFAULT_CLAIM_LEASE_MS
    ) -> tuple[bool, bool]:
        return self._run(self._dispatched_plan(token, participants, lease_ms, time.monotonic()))
