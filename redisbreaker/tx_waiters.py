"""Waking transaction waiters, on the process's shared pub/sub hub (``events.py``).

The script that decides a transaction publishes the decision (msgpack) on the
prefix's channel (on Redis Cluster: its hash slot's, see keys.py). Waiters register
under their transaction id with the hub of their client: the same connection per
process and client (per Cluster master) that breakers use, so a process with a
thousand waiting participants holds one extra Redis connection, not a thousand, and
nobody polls. A waiter holds no pooled connection while it sleeps; its
occasional status read borrows one for a single short command.

A message can be missed while the subscription is (re)made. The waiter closes that
race: it registers first, then reads the status once; when the server confirms the
subscription of its channel (or the connection drops) the hub tells its waiters to read
the status again; and a waiter always reads it once more at its own timeout. A waiter always
leaves the hub (also on error or cancellation), so an id nobody waits on costs
nothing there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redisbreaker.tx_core import Decision, parse_message

# How long a waiter waits for the subscription to be confirmed before it falls back
# to reading the status on a short period (degraded, but never stuck).
READY_TIMEOUT = 2.0

__all__ = ["READY_TIMEOUT", "Waiter", "decode"]


def decode(payload: bytes) -> tuple[str, Decision] | None:
    """A published decision as (transaction id, decision); ``None`` if malformed."""
    decision = parse_message(payload)
    return None if decision is None else (decision.tx_id, decision)


@dataclass(eq=False)
class Waiter:
    """One waiter's mailbox: the published decision, or a request to read again.

    ``event`` is a ``threading.Event`` for threads or an ``asyncio.Event`` for a loop;
    ``ready`` is the hub's flag for the transaction's channel, set while its
    subscription is confirmed.
    """

    tx_id: str
    event: Any
    ready: Any
    decision: Decision | None = None
    recheck: bool = False

    def on_message(self, decision: Decision) -> None:
        self.decision = decision
        self.event.set()

    def on_reset(self) -> None:
        self.recheck = True
        self.event.set()

    def take(self) -> Decision | None:
        """The decision if one arrived; clears a recheck request and the event."""
        self.event.clear()
        self.recheck = False
        return self.decision
