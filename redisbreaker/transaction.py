"""Transaction vote tallies: N participants commit together or roll back together.

Redis is the coordinator: the whole transaction is one hash and every rule is
decided inside a Lua script with the server's clock, so there is no coordinator
process to lose. See docs/transactions.md for the rules and the Celery modes.

::

    tx = Transaction.begin(participants=100, timeout=30)
    # in each participant, anywhere in the fleet:
    tx = Transaction(tx_id)
    decision = tx.vote_and_wait(i, ok=True)
    conn.commit() if decision.committed else conn.rollback()
    tx.ack(i)

This module is the thread shell: the handle's one implementation is
:class:`redisbreaker.tx_api.TransactionApi`; here are its blocking primitives.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import redis.cluster
import redis.exceptions

from redisbreaker import events
from redisbreaker import tx_core as core
from redisbreaker.config import default_client
from redisbreaker.immediate import Immediate, run_now
from redisbreaker.tx_api import Participation, TransactionApi
from redisbreaker.tx_core import Claim, Decision, Outcome, ParticipantId, Tally
from redisbreaker.tx_waiters import READY_TIMEOUT, Latch, Waiter, thread_relay

__all__ = ["Decision", "Outcome", "Participation", "Tally", "Transaction"]


class Transaction(
    TransactionApi[Decision, Tally, tuple[Outcome, bytes], Claim, tuple[bool, bool], "Transaction"]
):
    __doc__ = TransactionApi.__doc__

    def _default_client(self) -> Any:
        return default_client()

    def _finish(self, work: Coroutine[Any, Any, Any]) -> Any:
        return run_now(work)

    def _eval(self, call: core.Call) -> Immediate[Any]:
        args = (call.script.sha, 1, self._keys.key, *self._argv(call))
        try:
            return Immediate(self.client.evalsha(*args))
        except redis.exceptions.NoScriptError:
            self.client.script_load(call.script.text)
            return Immediate(self.client.evalsha(*args))

    def _confirm(self, replicas: int, wait_ms: int) -> Immediate[tuple[bool, int]]:
        script = core.script("tx_confirm")
        client = self.client
        if isinstance(client, redis.cluster.RedisCluster):  # the key's master, directly
            node = client.get_node_from_key(self._keys.key)  # type: ignore[no-untyped-call]
            client = client.get_redis_connection(node)
        for attempt in (1, 2):
            pipe = client.pipeline(transaction=False)  # one connection: WAIT counts its writes
            pipe.evalsha(script.sha, 1, self._keys.key, *self._argv(core.confirm_call()))
            pipe.execute_command("WAIT", replicas, wait_ms)
            try:
                still, acked = pipe.execute()
            except redis.exceptions.NoScriptError:
                if attempt == 2:
                    raise
                client.script_load(script.text)
            except redis.exceptions.MovedError:  # a failover moved the slot: learn where
                if isinstance(self.client, redis.cluster.RedisCluster):
                    self.client.nodes_manager.initialize()
                raise
            else:
                return Immediate((bool(still), int(acked)))
        raise AssertionError("unreachable")

    def _sleep(self, seconds: float) -> Immediate[None]:
        time.sleep(seconds)
        return Immediate(None)

    def _hub(self) -> events.EventHub:
        return events.hub_for(self.client)

    def _waiter(self) -> Waiter:
        ready = self._hub().ready(self.channel)
        return Waiter(self.id, Latch(), ready, thread_relay())

    def _until_woken(self, waiter: Waiter, seconds: float) -> Immediate[bool]:
        waiter.asleep = True  # only now may the relay give it a turn (see Relay)
        try:
            return Immediate(waiter.event.wait(seconds))
        finally:
            waiter.asleep = False

    def _until_subscribed(self, waiter: Waiter) -> Immediate[bool]:
        return Immediate(waiter.ready.wait(READY_TIMEOUT))

    def _invoke(self, fn: Callable[[], Any]) -> Immediate[object]:
        return Immediate(fn())

    @contextlib.contextmanager
    def participate(
        self, participant: ParticipantId, *, commit: Callable[[], object],
        rollback: Callable[[], object],
    ) -> Iterator[Participation]:  # fmt: skip
        """Blocking mode: do the work in the block; vote, wait, commit or roll back, ack.

        An exception in the block votes no (its text is the reason), rolls back and
        re-raises. Otherwise the participant votes yes and waits for the decision,
        then calls ``commit`` or ``rollback`` and acks. If ``commit`` raises, the
        participant does not ack. If the decision cannot be learned (Redis
        unreachable past the deadline plus ``grace``), it calls neither and raises
        :class:`~redisbreaker.errors.TransactionInDoubtError` (see docs/transactions.md).
        """
        job = Participation(self, core.participant_id(participant))
        try:
            yield job
        except BaseException as failure:
            run_now(self._after_block(job, failure, commit, rollback))
            raise
        run_now(self._after_block(job, None, commit, rollback))
