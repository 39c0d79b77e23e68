"""Waking transaction waiters, on the process's shared pub/sub hub (``events.py``).

The script that decides a transaction PUBLISHes the decision (msgpack) on the
prefix's channel. Waiters register under their transaction id with the hub of their
client: the same single connection per process and client that breakers use, so a
process with a thousand waiting participants holds one extra Redis connection, not a
thousand, and nobody polls. A waiter holds no pooled connection while it sleeps; its
occasional status read borrows one for a single short command.

A message can be missed while the subscription is (re)made. The waiter closes that
race: it registers first, then reads the status once; when the server confirms the
subscription (or the connection drops) the hub tells every waiter to read the status
again; and a waiter always reads it once more at its own timeout. A waiter always
leaves the hub (also on error or cancellation), so an id nobody waits on costs
nothing there.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from redisbreaker import events
from redisbreaker.tx_core import Decision, parse_message

# How long a waiter waits for the subscription to be confirmed before it falls back
# to reading the status on a short period (degraded, but never stuck).
READY_TIMEOUT = 2.0


def _decode(payload: bytes) -> tuple[str, Decision] | None:
    decision = parse_message(payload)
    return None if decision is None else (decision.tx_id, decision)


@dataclass(eq=False)
class Waiter:
    """One waiter's mailbox: the published decision, or a request to read again.

    ``event`` is a ``threading.Event`` for threads or an ``asyncio.Event`` for a loop;
    ``ready`` is the hub's event, set while its subscription is confirmed.
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


class Hub:
    """Transaction waiting on one client's hub, for one channel (no state of its own)."""

    def __init__(self, client: Any, channel: str) -> None:
        self.events = events.hub_for(client)
        self.channel = channel

    @contextlib.contextmanager
    def waiting(self, tx_id: str) -> Iterator[Waiter]:
        """Register a waiter for ``tx_id`` and wait (bounded) for the subscription."""
        waiter = Waiter(tx_id, threading.Event(), self.events.connected)
        try:
            self.events.add(self.channel, tx_id, waiter, _decode)
            self.events.connected.wait(READY_TIMEOUT)
            yield waiter
        finally:
            self.events.remove(self.channel, tx_id, waiter)


class AsyncHub:
    """The asyncio twin of :class:`Hub`, on the running loop's hub for the client."""

    def __init__(self, client: Any, channel: str) -> None:
        self.events = events.async_hub_for(client)
        self.channel = channel

    @contextlib.asynccontextmanager
    async def waiting(self, tx_id: str) -> AsyncIterator[Waiter]:
        waiter = Waiter(tx_id, asyncio.Event(), self.events.connected)
        try:
            self.events.add(self.channel, tx_id, waiter, _decode)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.events.connected.wait(), READY_TIMEOUT)
            yield waiter
        finally:
            self.events.remove(self.channel, tx_id, waiter)


def hub_for(client: Any, channel: str) -> Hub:
    return Hub(client, channel)


def async_hub_for(client: Any, channel: str) -> AsyncHub:
    return AsyncHub(client, channel)
