"""The asyncio twin of :class:`redisbreaker.transaction.Transaction`.

The handle's one implementation is :class:`redisbreaker.tx_api.TransactionApi`; here
are its awaiting primitives. Waiters in one event loop share one subscriber task and
one pub/sub connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import redis.asyncio.cluster
import redis.exceptions
from redis.asyncio.cluster import PipelineCommand

from redisbreaker import events
from redisbreaker import tx_core as core
from redisbreaker.config import default_async_client
from redisbreaker.tx_api import Participation, TransactionApi
from redisbreaker.tx_core import Claim, Decision, Outcome, ParticipantId, Tally
from redisbreaker.tx_waiters import READY_TIMEOUT, Waiter

__all__ = ["Decision", "Outcome", "Participation", "Tally", "Transaction"]


class Transaction(
    TransactionApi[
        Coroutine[Any, Any, Decision], Coroutine[Any, Any, Tally],
        Coroutine[Any, Any, tuple[Outcome, bytes]], Coroutine[Any, Any, Claim],
        Coroutine[Any, Any, tuple[bool, bool]], Coroutine[Any, Any, "Transaction"],
    ]
):  # fmt: skip
    __doc__ = TransactionApi.__doc__

    def _default_client(self) -> Any:
        return default_async_client()

    def _finish(self, work: Coroutine[Any, Any, Any]) -> Any:
        return work

    async def _eval(self, call: core.Call) -> Any:
        args = (call.script.sha, 1, self._keys.key, *self._argv(call))
        try:
            return await self.client.evalsha(*args)
        except redis.exceptions.NoScriptError:
            await self.client.script_load(call.script.text)
        return await self.client.evalsha(*args)

    async def _confirm(self, replicas: int, wait_ms: int) -> tuple[bool, int]:
        script = core.script("tx_confirm")
        args = (script.sha, 1, self._keys.key, *self._argv(core.confirm_call()))
        for attempt in (1, 2):
            try:
                still, acked = await self._on_one_connection(
                    ("EVALSHA", *args), ("WAIT", replicas, wait_ms)
                )
            except redis.exceptions.NoScriptError:
                if attempt == 2:
                    raise
                await self.client.script_load(script.text)
            else:
                return bool(still), int(acked)
        raise AssertionError("unreachable")

    async def _on_one_connection(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send ``commands`` on one connection to the transaction's master (WAIT counts
        only that connection's writes); the first error is raised."""
        client = self.client
        if not isinstance(client, redis.asyncio.cluster.RedisCluster):
            pipe = client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute())
        # The asyncio Cluster client's pipeline may split commands over connections:
        # send them down one connection of the key's master.
        node = client.get_node_from_key(self._keys.key)
        if node is None:
            raise redis.exceptions.ClusterDownError(f"no node serves {self._keys.key!r}")
        batch = [PipelineCommand(i, *command) for i, command in enumerate(commands)]
        await node.execute_pipeline(batch)
        for sent in batch:
            if isinstance(sent.result, redis.exceptions.MovedError):  # a failover moved
                await client.nodes_manager.initialize()  # the slot: learn where
            if isinstance(sent.result, Exception):
                raise sent.result
        return [sent.result for sent in batch]

    def _sleep(self, seconds: float) -> Awaitable[None]:
        return asyncio.sleep(seconds)

    def _hub(self) -> events.AsyncEventHub:
        return events.async_hub_for(self.client)

    def _waiter(self) -> Waiter:
        return Waiter(self.id, asyncio.Event(), self._hub().ready(self.channel))

    async def _until_woken(self, waiter: Waiter, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter.event.wait(), seconds)

    async def _until_subscribed(self, waiter: Waiter) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter.ready.wait(), READY_TIMEOUT)

    async def _invoke(self, fn: Callable[[], Any]) -> object:
        return await fn()

    @contextlib.asynccontextmanager
    async def participate(
        self, participant: ParticipantId, *, commit: Callable[[], Awaitable[object]],
        rollback: Callable[[], Awaitable[object]],
    ) -> AsyncIterator[Participation]:  # fmt: skip
        """Blocking mode for asyncio (see the thread ``Transaction.participate``)."""
        job = Participation(self, core.participant_id(participant))
        try:
            yield job
        except BaseException as failure:
            await self._after_block(job, failure, commit, rollback)
            raise
        await self._after_block(job, None, commit, rollback)
