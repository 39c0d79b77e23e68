"""The asyncio twin of :class:`redisbreaker.transaction.Transaction`.

Same scripts, same core (:mod:`redisbreaker.tx_core`): this shell runs the same
plans and only the I/O awaits. Waiters in one event loop share one subscriber task
and one pub/sub connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.exceptions

from redisbreaker import tx_core as core
from redisbreaker.config import AsyncClient, default_async_client, default_prefix
from redisbreaker.errors import StorageError, TransactionError
from redisbreaker.transaction import Participation
from redisbreaker.tx_core import Claim, Decision, Outcome, ParticipantId, Tally
from redisbreaker.tx_waiters import Waiter, async_hub_for

__all__ = ["Decision", "Outcome", "Participation", "Tally", "Transaction"]

T = TypeVar("T")


class Transaction(core.TxBase):
    """A handle on one transaction, for asyncio code (see the sync class)."""

    def __init__(
        self,
        tx_id: str | bytes,
        *,
        client: AsyncClient | None = None,
        prefix: str | None = None,
        grace: float = core.DEFAULT_GRACE,
    ) -> None:
        self._setup(tx_id, prefix if prefix is not None else default_prefix(), grace, client)

    def _default_client(self) -> Any:
        return default_async_client()

    def __repr__(self) -> str:
        return f"<aio.Transaction {self.id!r}>"

    async def _eval(self, call: core.Call) -> Any:
        try:
            return await self._client.evalsha(call.script.sha, 1, self._keys.key, *call.args)
        except redis.exceptions.NoScriptError:
            await self._client.script_load(call.script.text)
            return await self._client.evalsha(call.script.sha, 1, self._keys.key, *call.args)

    async def _run(self, plan: core.Plan[T], waiter: Waiter | None = None) -> T:
        ready = waiter.ready if waiter is not None else None
        while True:
            step = plan.next(time.monotonic(), ready is None or ready.is_set())
            if isinstance(step, core.Done):
                return step.value
            if isinstance(step, core.Call):
                try:
                    reply = await self._eval(step)
                except Exception as exc:
                    plan.failed(exc, time.monotonic())
                else:
                    plan.replied(reply, time.monotonic())
            elif waiter is None:
                await asyncio.sleep(step.seconds)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.event.wait(), step.seconds)
                plan.woke(waiter.take(), time.monotonic())

    @classmethod
    async def begin(
        cls,
        participants: int | Sequence[ParticipantId],
        *,
        timeout: float,
        tx_id: str | bytes | None = None,
        keep: float = core.DEFAULT_KEEP,
        client: AsyncClient | None = None,
        prefix: str | None = None,
        payload: bytes = b"",
        timeout_hint: str = "",
        clock_ms: core.ClockMs | None = None,
        grace: float = core.DEFAULT_GRACE,
    ) -> Transaction:
        """Create a transaction of ``participants`` (a count, or their ids)."""
        settings = core.begin_settings(participants, timeout, keep, payload, timeout_hint)
        tx = cls(
            tx_id if tx_id is not None else core.new_id(), client=client, prefix=prefix, grace=grace
        )
        tx._clock_ms = clock_ms
        s = settings
        await tx._run(
            tx._begin_plan(
                s.n, s.names, s.timeout_ms, s.keep_ms, s.payload, s.hint, time.monotonic()
            )
        )
        return tx

    async def vote(
        self, participant: ParticipantId, ok: bool, *, reason: object = None
    ) -> Decision:
        """Record ``participant``'s vote (the first one counts); return the state after it."""
        return await self._run(self._vote_plan(participant, ok, reason, time.monotonic(), None))

    async def status(self, participant: ParticipantId | None = None) -> Decision:
        """The decision and tally now; decides ROLLBACK if the deadline has passed."""
        p = core.participant_id(participant) if participant is not None else None
        return await self._run(self._status_plan(p, time.monotonic()))

    async def tally(self) -> Tally:
        return (await self.status()).tally

    async def abort(self, reason: object) -> Decision:
        return await self._run(self._abort_plan(reason, time.monotonic()))

    async def ack(self, participant: ParticipantId) -> Decision:
        return await self._run(self._ack_plan(participant, time.monotonic()))

    async def wait(
        self, timeout: float | None = None, *, participant: ParticipantId | None = None
    ) -> Decision:
        """Wait until decided, or ``timeout`` seconds (see the sync ``wait``)."""
        return await self._wait(None, timeout, participant)

    async def vote_and_wait(
        self,
        participant: ParticipantId,
        ok: bool,
        *,
        reason: object = None,
        timeout: float | None = None,
    ) -> Decision:
        """Vote, then wait for the decision (subscribed before voting)."""
        return await self._wait((participant, ok, reason), timeout, participant)

    async def _wait(
        self,
        vote: tuple[object, object, object] | None,
        timeout: float | None,
        participant: ParticipantId | None,
    ) -> Decision:
        plan = self._wait_plan(vote, timeout, participant, time.monotonic())
        async with async_hub_for(self._client, self._keys.channel).waiting(self.id) as waiter:
            return await self._run(plan, waiter)

    @contextlib.asynccontextmanager
    async def participate(
        self,
        participant: ParticipantId,
        *,
        commit: Callable[[], Awaitable[object]],
        rollback: Callable[[], Awaitable[object]],
    ) -> AsyncIterator[Participation]:
        """Blocking mode for asyncio (see the sync ``participate``)."""
        p = core.participant_id(participant)
        result = Participation(self, p)
        try:
            yield result
        except BaseException as exc:
            try:
                with core.logged(self.id, p, "no vote"):
                    result.decision = await self.vote(p, False, reason=exc)
            finally:
                await rollback()
            with core.logged(self.id, p, "ack"):
                result.decision = await self.ack(p)
                result.acked = True
            raise
        try:
            decision = await self.vote_and_wait(p, True)
        except (TransactionError, StorageError) as exc:
            raise core.in_doubt(self.id, p, exc) from exc
        result.decision = decision
        await (commit() if decision.committed else rollback())
        with core.logged(self.id, p, "ack"):
            result.decision = await self.ack(p)
            result.acked = True

    async def payload(self) -> tuple[Outcome, bytes]:
        """The outcome so far and the ``payload`` given at :meth:`begin`."""
        return await self._run(self._payload_plan(time.monotonic()))

    async def _claim(self, token: str, lease_ms: int = core.DEFAULT_CLAIM_LEASE_MS) -> Claim:
        return await self._run(self._claim_plan(token, lease_ms, time.monotonic()))

    async def _dispatched(
        self, token: str, participants: Sequence[str], lease_ms: int = core.DEFAULT_CLAIM_LEASE_MS
    ) -> tuple[bool, bool]:
        return await self._run(
            self._dispatched_plan(token, participants, lease_ms, time.monotonic())
        )
