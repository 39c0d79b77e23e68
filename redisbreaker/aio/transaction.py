"""The asyncio twin of :class:`redisbreaker.transaction.Transaction`.

Same scripts, same core (:mod:`redisbreaker._txcore`); only the I/O awaits. Waiters
in one event loop share one subscriber task and one pub/sub connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from redisbreaker import _txcore as core
from redisbreaker._tx_waiters import DEGRADED_STEP, async_hub_for
from redisbreaker._txcore import Claim, Decision, Outcome, ParticipantId, Tally
from redisbreaker.config import AsyncClient, default_async_client, default_prefix
from redisbreaker.scripts import register
from redisbreaker.transaction import Participation

__all__ = ["Decision", "Outcome", "Participation", "Tally", "Transaction"]

_SCRIPTS = ("tx_begin", "tx_vote", "tx_status", "tx_abort", "tx_ack", "tx_claim", "tx_dispatched")


class Transaction:
    """A handle on one transaction's tally, for asyncio code (see the sync class)."""

    def __init__(
        self, tx_id: str, *, client: AsyncClient | None = None, prefix: str | None = None
    ) -> None:
        self.id = tx_id
        self._client: Any = client if client is not None else default_async_client()
        self._keys = core.Keys.of(prefix if prefix is not None else default_prefix(), tx_id)
        self._scripts = {name: register(self._client, name) for name in _SCRIPTS}
        # Tests replace this with a virtual clock (ms); None means the server's TIME.
        self._clock_ms: core.ClockMs | None = None

    def __repr__(self) -> str:
        return f"<aio.Transaction {self.id!r}>"

    async def _call(self, name: str, *args: object) -> Any:
        return await self._scripts[name](
            keys=list(self._keys.keys), args=self._keys.args(self._clock_ms, *args)
        )

    @classmethod
    async def begin(
        cls,
        participants: int | Sequence[ParticipantId],
        *,
        timeout: float,
        tx_id: str | None = None,
        keep: float = core.DEFAULT_KEEP,
        client: AsyncClient | None = None,
        prefix: str | None = None,
        payload: bytes = b"",
        timeout_hint: str = "",
        clock_ms: core.ClockMs | None = None,
    ) -> Transaction:
        """Create a transaction of ``participants`` (a count, or their ids)."""
        n, names = core.validate_participants(participants)
        ms = core.timeout_ms(timeout)
        keep_ms = core.timeout_ms(keep, "keep")
        tx = cls(tx_id if tx_id is not None else core.new_id(), client=client, prefix=prefix)
        tx._clock_ms = clock_ms
        reply = await tx._scripts["tx_begin"](
            keys=list(tx._keys.keys),
            args=core.begin_args(tx._keys, clock_ms, n, names, ms, keep_ms, payload, timeout_hint),
        )
        core.parse_view(tx.id, reply)
        return tx

    async def vote(
        self, participant: ParticipantId, ok: bool, *, reason: object = None
    ) -> Decision:
        """Record ``participant``'s vote (the first one counts); return the state after it."""
        p = core.participant_id(participant)
        reply = await self._call("tx_vote", p, "1" if ok else "0", core.reason_text(reason))
        return core.parse_view(self.id, reply, p)

    async def status(self, participant: ParticipantId | None = None) -> Decision:
        """The decision and tally now; decides ROLLBACK if the deadline has passed."""
        p = core.participant_id(participant) if participant is not None else ""
        return core.parse_view(self.id, await self._call("tx_status", p), p or None)

    async def tally(self) -> Tally:
        return (await self.status()).tally

    async def abort(self, reason: object) -> Decision:
        return core.parse_view(self.id, await self._call("tx_abort", core.reason_text(reason)))

    async def ack(self, participant: ParticipantId) -> Decision:
        p = core.participant_id(participant)
        return core.parse_view(self.id, await self._call("tx_ack", p), p)

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
        vote: tuple[ParticipantId, bool, object] | None,
        timeout: float | None,
        participant: ParticipantId | None,
    ) -> Decision:
        limit = core.timeout_ms(timeout) if timeout is not None else None
        hub = async_hub_for(self._client, self._keys.channel)
        async with hub.waiting(self.id) as waiter:
            if vote is not None:
                decision = await self.vote(vote[0], vote[1], reason=vote[2])
            else:
                decision = await self.status(participant)
            until = decision.tally.now_ms + limit if limit is not None else None
            while (step := core.wait_step(decision, until)) is not None:
                if not hub.ready.is_set():
                    step = min(step, DEGRADED_STEP)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.event.wait(), step)
                published = waiter.take()
                if published is not None:
                    return published
                decision = await self.status(participant)
            return decision

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
                result.decision = await self.vote(p, False, reason=exc)
            finally:
                await rollback()
            result.decision = await self.ack(p)
            raise
        decision = await self.vote_and_wait(p, True)
        if decision.committed:
            await commit()
        else:
            await rollback()
        await self.ack(p)
        result.decision = decision

    async def _claim(self, token: str, lease_ms: int = core.DEFAULT_CLAIM_LEASE_MS) -> Claim:
        return core.parse_claim(self.id, await self._call("tx_claim", token, lease_ms))

    async def _dispatched(
        self, token: str, participants: Sequence[str], lease_ms: int = core.DEFAULT_CLAIM_LEASE_MS
    ) -> tuple[bool, bool]:
        held, done = await self._call("tx_dispatched", token, lease_ms, *participants)
        return bool(held), bool(done)
