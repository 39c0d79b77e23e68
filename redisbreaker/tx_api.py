"""The transaction handle's one implementation, shared by the thread and asyncio classes.

:mod:`redisbreaker.tx_core` decides (plans: call this script, sleep this long, done);
this module interprets the plans, written once as coroutines over five I/O
primitives that each shell provides (:mod:`redisbreaker.transaction` with blocking
calls wrapped in :class:`~redisbreaker.immediate.Immediate`, run by
:func:`~redisbreaker.immediate.run_now`; :mod:`redisbreaker.aio.transaction` with real
awaits). Every public method is defined here once; its return type is the shell's
(``Decision`` for threads, ``Awaitable[Decision]`` for asyncio), given as the class's
type parameters.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from redisbreaker import tx_core as core
from redisbreaker.config import default_commit_replicas, default_prefix
from redisbreaker.errors import StorageError, TransactionError
from redisbreaker.events import Hub
from redisbreaker.tx_core import Claim, Decision, Outcome, ParticipantId
from redisbreaker.tx_waiters import Waiter, decode

T = TypeVar("T")
# What each public method returns in a shell: the value (threads) or an awaitable of it.
DecisionR = TypeVar("DecisionR")
TallyR = TypeVar("TallyR")
PayloadR = TypeVar("PayloadR")
ClaimR = TypeVar("ClaimR")
DispatchedR = TypeVar("DispatchedR")
HandleR = TypeVar("HandleR")


@dataclass
class Participation:
    """What ``participate`` learned: the decision, once it is known.

    ``acked`` is False when the ack could not be recorded (logged; the outcome was
    applied all the same, and the tally's ``acked`` shows the participant missing).
    """

    tx: object  # the Transaction (threads or asyncio) it belongs to
    participant: str
    decision: Decision | None = None
    acked: bool = False

    @property
    def committed(self) -> bool:
        return self.decision is not None and self.decision.committed


class TransactionApi(
    core.TxBase, Generic[DecisionR, TallyR, PayloadR, ClaimR, DispatchedR, HandleR]
):
    """A handle on one transaction; anyone holding the id can make one (no I/O).

    ``client`` defaults to the configured one (resolved on first use), ``prefix`` to
    the configured prefix. ``grace`` is how long (seconds) after the transaction's
    deadline a call keeps retrying while Redis does not answer, before it raises
    :class:`~redisbreaker.errors.TransactionUnavailableError`. ``commit_replicas``
    (default: ``configure(commit_replicas=...)``, else 0) is how many replicas must
    have a COMMIT before a call hands it over (docs/redis.md): Redis replicates
    asynchronously, and a commit the master loses in a failover must not be acted on.
    """

    def __init__(
        self, tx_id: str | bytes, *, client: Any = None, prefix: str | None = None,
        grace: float = core.DEFAULT_GRACE, commit_replicas: int | None = None,
    ) -> None:  # fmt: skip
        replicas = default_commit_replicas() if commit_replicas is None else commit_replicas
        self._setup(
            tx_id, prefix if prefix is not None else default_prefix(), grace, client, replicas
        )

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.Transaction {self.id!r}>"

    # -- the primitives each shell provides ---------------------------------------------

    def _finish(self, work: Coroutine[Any, Any, Any]) -> Any:
        """Threads: run ``work`` now and return its value; asyncio: return it to await.
        (Typed ``Any``: the class's type parameters say what each method returns.)"""
        raise NotImplementedError

    def _eval(self, call: core.Call) -> Awaitable[Any]:
        """Send one script call (EVALSHA, loading the script on NOSCRIPT)."""
        raise NotImplementedError

    def _sleep(self, seconds: float) -> Awaitable[None]:
        raise NotImplementedError

    def _hub(self) -> Hub:
        """This process's pub/sub hub for the client (threads) or the running loop."""
        raise NotImplementedError

    def _waiter(self) -> Waiter:
        """A new waiter whose event the shell can wait on."""
        raise NotImplementedError

    def _until_woken(self, waiter: Waiter, seconds: float) -> Awaitable[object]:
        """Wait at most ``seconds`` for ``waiter``'s event."""
        raise NotImplementedError

    def _until_subscribed(self, waiter: Waiter) -> Awaitable[object]:
        """Wait (at most ``READY_TIMEOUT``) for the hub's subscription to be confirmed."""
        raise NotImplementedError

    def _invoke(self, fn: Callable[[], Any]) -> Awaitable[object]:
        """Call a user's ``commit``/``rollback`` (and await it in asyncio)."""
        raise NotImplementedError

    def _confirm(self, replicas: int, wait_ms: int) -> Awaitable[tuple[bool, int]]:
        """Run ``tx_confirm`` and then ``WAIT replicas wait_ms`` on one connection to
        the transaction's master: (still committed there, replicas that acknowledged)."""
        raise NotImplementedError

    # -- running plans ---------------------------------------------------------------------

    async def _execute(
        self, plan: core.Plan[T], waiter: Waiter | None = None, *, confirm: bool = True
    ) -> T:
        """Interpret ``plan`` until it is done; sleeps wake early on ``waiter``. A
        COMMIT it ends with is confirmed on replicas first, when asked (``confirm``
        is False where nothing is acted on: a tally, an ack after the work)."""
        ready = waiter.ready if waiter is not None else None
        while True:
            step = plan.next(time.monotonic(), ready is None or ready.is_set())
            if isinstance(step, core.Done):
                if confirm and core.to_confirm(step.value, self.commit_replicas):
                    await self._confirmed()
                return step.value
            if isinstance(step, core.Call):
                try:
                    reply = await self._eval(step)
                except Exception as exc:
                    plan.failed(exc, time.monotonic())
                else:
                    plan.replied(reply, time.monotonic())
            elif waiter is None:
                await self._sleep(step.seconds)
            else:
                await self._until_woken(waiter, step.seconds)
                plan.woke(waiter.take(), time.monotonic())

    async def _confirmed(self) -> None:
        """Return once ``commit_replicas`` replicas have the commit just read; raise
        :class:`~redisbreaker.errors.TransactionUnavailableError` if the master no
        longer has it, or if the replicas do not confirm it within the call's budget
        (the transaction's deadline plus ``grace``, as for every retried call)."""
        n = self.commit_replicas
        give_up = self._ctx.give_up_at(time.monotonic())
        acked, attempt = -1, 0
        while True:
            try:
                still, acked = await self._confirm(n, core.CONFIRM_WAIT_MS)
            except Exception as exc:
                if not core.is_transient(exc):
                    raise core.storage_error(self.id, "confirming the commit", exc) from exc
            else:
                if not still:
                    raise core.commit_lost(self.id)
                if acked >= n:
                    return
            if time.monotonic() >= give_up:
                raise core.unconfirmed(self.id, n, acked)
            await self._sleep(core.backoff(attempt))
            attempt += 1

    async def _waiting(self, plan: core.Waiting) -> Decision:
        """Run a waiting plan registered on the hub, so a published decision wakes it.

        The waiter registers before the plan's first read, so nothing is missed; it
        waits (bounded) for the subscription, and always leaves the hub. A published
        decision ends the plan with no further read: the message carries all of it.
        """
        hub, waiter, channel = self._hub(), self._waiter(), self.channel
        hub.add(channel, self.id, waiter, decode, final=True)  # a decision never changes
        try:
            await self._until_subscribed(waiter)
            waiter.settle()  # the confirmation's re-read request: the first read covers it
            return await self._execute(plan, waiter)
        finally:
            hub.remove(channel, self.id, waiter)
            waiter.leave()

    async def _then(self, plan: core.Plan[T], fn: Callable[[T], Any]) -> Any:
        return fn(await self._execute(plan, confirm=False))

    async def _create(self, s: core.BeginSettings) -> TransactionApi[Any, Any, Any, Any, Any, Any]:
        plan = self._begin_plan(s.n, s.names, s.timeout_ms, s.keep_ms, s.payload, s.hint,
                                time.monotonic())  # fmt: skip
        await self._execute(plan)
        return self

    # -- lifecycle ---------------------------------------------------------------------

    @classmethod
    def begin(
        cls,
        participants: int | Sequence[ParticipantId],
        *,
        timeout: float,
        tx_id: str | bytes | None = None,
        keep: float = core.DEFAULT_KEEP,
        client: Any = None,
        prefix: str | None = None,
        payload: bytes = b"",
        timeout_hint: str = "",
        clock_ms: core.ClockMs | None = None,
        grace: float = core.DEFAULT_GRACE,
        commit_replicas: int | None = None,
    ) -> HandleR:
        """Create a transaction of ``participants`` (a count, or their ids).

        ``timeout`` (seconds, server clock) is the deadline for all votes; ``keep``
        how long the decision is kept. Naming the participants makes votes from
        anyone else an error. ``payload`` is opaque bytes kept with the tally for
        integrations (the Celery callback mode stores its handlers there).
        """
        s = core.begin_settings(participants, timeout, keep, payload, timeout_hint)
        tx_id = tx_id if tx_id is not None else core.new_id()
        tx = cls(tx_id, client=client, prefix=prefix, grace=grace, commit_replicas=commit_replicas)
        tx._clock_ms = clock_ms
        return cast("HandleR", tx._finish(tx._create(s)))

    def vote(self, participant: ParticipantId, ok: bool, *, reason: object = None) -> DecisionR:
        """Record ``participant``'s vote (the first one counts); return the state after it.

        A redelivered participant voting again gets the current decision and its
        original vote back in ``Decision.vote``, never a second vote. A vote whose
        reply is lost is sent again until answered, so the vote returned is the one
        on record.
        """
        plan = self._vote_plan(participant, ok, reason, time.monotonic(), None)
        return cast("DecisionR", self._finish(self._execute(plan)))

    def status(self, participant: ParticipantId | None = None) -> DecisionR:
        """The decision and tally now; decides ROLLBACK if the deadline has passed."""
        p = core.participant_id(participant) if participant is not None else None
        return cast(
            "DecisionR", self._finish(self._execute(self._status_plan(p, time.monotonic())))
        )

    def tally(self) -> TallyR:
        """Voted yes, voted no, waiting, acked (see :class:`~redisbreaker.Tally`)."""
        plan = self._status_plan(None, time.monotonic())
        return cast("TallyR", self._finish(self._then(plan, lambda d: d.tally)))

    def abort(self, reason: object) -> DecisionR:
        """Decide ROLLBACK now (unless already decided) with ``reason``."""
        return cast(
            "DecisionR", self._finish(self._execute(self._abort_plan(reason, time.monotonic())))
        )

    def ack(self, participant: ParticipantId) -> DecisionR:
        """Report ``participant``'s commit or rollback done (counted once)."""
        plan = self._ack_plan(participant, time.monotonic())
        return cast("DecisionR", self._finish(self._execute(plan, confirm=False)))

    def payload(self) -> PayloadR:
        """The outcome so far and the ``payload`` given at :meth:`begin`."""
        return cast("PayloadR", self._finish(self._execute(self._payload_plan(time.monotonic()))))

    # -- waiting -----------------------------------------------------------------------

    def wait(
        self, timeout: float | None = None, *, participant: ParticipantId | None = None
    ) -> DecisionR:
        """Wait until the transaction is decided, or ``timeout`` seconds have passed.

        With no timeout it returns at the latest just after the deadline, when its
        own status read decides ROLLBACK if nobody else has. A still-pending result
        is only possible when ``timeout`` is given and runs out first. While Redis
        does not answer it keeps trying, until the deadline plus ``grace`` (or its
        ``timeout``), then raises ``TransactionUnavailableError``.
        """
        plan = self._wait_plan(None, timeout, participant, time.monotonic())
        return cast("DecisionR", self._finish(self._waiting(plan)))

    def vote_and_wait(
        self, participant: ParticipantId, ok: bool, *, reason: object = None,
        timeout: float | None = None,
    ) -> DecisionR:  # fmt: skip
        """Vote, then wait for the decision (subscribed before voting, so nothing is missed)."""
        plan = self._wait_plan((participant, ok, reason), timeout, participant, time.monotonic())
        return cast("DecisionR", self._finish(self._waiting(plan)))

    # -- blocking participation (the shells add the context managers) ---------------------

    async def _after_block(
        self, job: Participation, failure: BaseException | None, commit: Any, rollback: Any
    ) -> None:
        """What ``participate`` does once its block has run (or raised ``failure``).

        A failure votes no (a no vote that cannot be sent is logged: the deadline then
        decides ROLLBACK), rolls back and acks. Otherwise: vote yes and wait; commit
        or roll back as decided; ack. If the decision cannot be learned, neither is
        called (the in-doubt rule: :class:`~redisbreaker.errors.TransactionInDoubtError`).
        """
        p = job.participant
        if failure is not None:
            try:
                with core.logged(self.id, p, "no vote"):
                    no = self._vote_plan(p, False, failure, time.monotonic(), None)
                    job.decision = await self._execute(no)
            finally:
                await self._invoke(rollback)
        else:
            yes = self._wait_plan((p, True, None), None, p, time.monotonic())
            try:
                decision = job.decision = await self._waiting(yes)
            except (TransactionError, StorageError) as exc:
                raise core.in_doubt(self.id, p, exc) from exc
            await self._invoke(commit if decision.committed else rollback)
        with core.logged(self.id, p, "ack"):
            job.decision = await self._execute(self._ack_plan(p, time.monotonic()), confirm=False)
            job.acked = True

    # -- handler dispatch (the Celery callback mode) ---------------------------------------

    def claim_dispatch(self, token: str, lease_ms: int = core.DEFAULT_CLAIM_LEASE_MS) -> ClaimR:
        """Take the right to send the decided transaction's handlers (see
        ``lua/tx_claim.lua``); ``token`` names the claimer, held for ``lease_ms``."""
        return cast(
            "ClaimR",
            self._finish(self._execute(self._claim_plan(token, lease_ms, time.monotonic()))),
        )

    def record_dispatched(
        self, token: str, participants: Sequence[str],
        lease_ms: int = core.DEFAULT_CLAIM_LEASE_MS,
    ) -> DispatchedR:  # fmt: skip
        """Record handlers sent for ``participants`` and extend the claim: (still held,
        every handler sent)."""
        plan = self._dispatched_plan(token, participants, lease_ms, time.monotonic())
        return cast("DispatchedR", self._finish(self._execute(plan)))


__all__ = ["Claim", "Outcome", "Participation", "TransactionApi"]
