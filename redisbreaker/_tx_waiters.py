"""Waking transaction waiters: one pub/sub connection per process, fanned out in memory.

The script that decides a transaction PUBLISHes the decision (msgpack) on the
prefix's channel. Each process keeps one subscriber per (client, channel): a daemon
thread for threads, one task per event loop for asyncio. Waiters register an event
under their transaction id; the subscriber sets every matching event, so a process
with a thousand waiting participants holds one extra Redis connection, not a
thousand, and nobody polls.

A message can be missed while the subscription is (re)connecting. The waiter closes
that race itself: it registers, waits until the subscription is confirmed, and only
then reads the status once; after a reconnect the subscriber tells every waiter to
read the status again, and a waiter always reads it once more at its own timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from redisbreaker._txcore import Decision, parse_message

log = logging.getLogger("redisbreaker.transaction")

# How long a waiter waits for the subscription to be confirmed before it falls back
# to reading the status on a short period (degraded, but never stuck).
READY_TIMEOUT = 2.0
# The fallback period when the subscription is not confirmed.
DEGRADED_STEP = 0.5
# A subscriber with no waiters for this long closes its connection and ends; the next
# waiter starts a new one (so idle processes and dropped clients hold nothing).
IDLE_EXIT = 5.0
_RECONNECT_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


@dataclass(eq=False)
class Waiter:
    """One waiter's mailbox: the published decision, or a request to read again."""

    tx_id: str
    event: threading.Event = field(default_factory=threading.Event)
    decision: Decision | None = None
    recheck: bool = False

    def take(self) -> Decision | None:
        """The decision if one arrived; clears a recheck request and the event."""
        self.event.clear()
        self.recheck = False
        return self.decision


class Hub:
    """The thread-side subscriber for one (client, channel) in this process."""

    def __init__(self, client: Any, channel: str) -> None:
        self.client = client
        self.channel = channel
        self.ready = threading.Event()
        self._lock = threading.Lock()
        self._waiters: dict[str, set[Waiter]] = {}
        self._thread: threading.Thread | None = None

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name=f"redisbreaker-tx-{self.channel}", daemon=True
                )
                self._thread.start()

    @contextlib.contextmanager
    def waiting(self, tx_id: str) -> Iterator[Waiter]:
        """Register a waiter for ``tx_id`` and wait (bounded) for the subscription."""
        waiter = Waiter(tx_id)
        with self._lock:
            self._waiters.setdefault(tx_id, set()).add(waiter)
        try:
            self._ensure_thread()
            self.ready.wait(READY_TIMEOUT)
            yield waiter
        finally:
            with self._lock:
                group = self._waiters.get(tx_id)
                if group is not None:
                    group.discard(waiter)
                    if not group:
                        del self._waiters[tx_id]

    def deliver(self, decision: Decision) -> None:
        with self._lock:
            group = list(self._waiters.get(decision.tx_id, ()))
        for waiter in group:
            waiter.decision = decision
            waiter.event.set()

    def _recheck_all(self) -> None:
        with self._lock:
            everyone = [w for group in self._waiters.values() for w in group]
        for waiter in everyone:
            waiter.recheck = True
            waiter.event.set()

    def _idle_exit(self, since: float) -> bool:
        """End the thread if nobody has waited since ``since``; decided under the lock."""
        with self._lock:
            if self._waiters or time.monotonic() - since < IDLE_EXIT:
                return False
            self._thread = None
            self.ready.clear()
            return True

    def _run(self) -> None:
        attempt = 0
        idle_since = time.monotonic()
        while True:
            pubsub = self.client.pubsub()
            try:
                pubsub.subscribe(self.channel)
                while True:
                    message = pubsub.get_message(timeout=1.0)
                    if self._waiters:
                        idle_since = time.monotonic()
                    elif self._idle_exit(idle_since):
                        return
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        attempt = 0
                        self.ready.set()
                        # Anything published while we were not subscribed is lost.
                        self._recheck_all()
                    elif message["type"] == "message":
                        decision = parse_message(message["data"])
                        if decision is not None:
                            self.deliver(decision)
            except Exception as exc:
                self.ready.clear()
                if self._idle_exit(idle_since):
                    return
                delay = _RECONNECT_DELAYS[min(attempt, len(_RECONNECT_DELAYS) - 1)]
                attempt += 1
                log.warning("transaction subscriber lost its connection (%r); retrying", exc)
                time.sleep(delay)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()


_hubs: dict[tuple[int, int, str], Hub] = {}
_hubs_lock = threading.Lock()


def hub_for(client: Any, channel: str) -> Hub:
    """This process's hub for ``client`` and ``channel`` (a fresh one after fork)."""
    key = (os.getpid(), id(client), channel)
    with _hubs_lock:
        hub = _hubs.get(key)
        if hub is None or hub.client is not client:
            hub = _hubs[key] = Hub(client, channel)
        return hub


# --- asyncio ------------------------------------------------------------------------


@dataclass(eq=False)
class AsyncWaiter:
    tx_id: str
    event: asyncio.Event = field(default_factory=asyncio.Event)
    decision: Decision | None = None
    recheck: bool = False

    def take(self) -> Decision | None:
        self.event.clear()
        self.recheck = False
        return self.decision


class AsyncHub:
    """The asyncio subscriber for one (client, channel) on one event loop."""

    def __init__(self, client: Any, channel: str) -> None:
        self.client = client
        self.channel = channel
        self.ready = asyncio.Event()
        self._waiters: dict[str, set[AsyncWaiter]] = {}
        self._task: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def waiting(self, tx_id: str) -> AsyncIterator[AsyncWaiter]:
        waiter = AsyncWaiter(tx_id)
        self._waiters.setdefault(tx_id, set()).add(waiter)
        try:
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._run())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ready.wait(), READY_TIMEOUT)
            yield waiter
        finally:
            group = self._waiters.get(tx_id)
            if group is not None:
                group.discard(waiter)
                if not group:
                    del self._waiters[tx_id]

    def _deliver(self, decision: Decision) -> None:
        for waiter in list(self._waiters.get(decision.tx_id, ())):
            waiter.decision = decision
            waiter.event.set()

    def _recheck_all(self) -> None:
        for group in list(self._waiters.values()):
            for waiter in list(group):
                waiter.recheck = True
                waiter.event.set()

    def _idle(self, since: float) -> bool:
        return not self._waiters and time.monotonic() - since >= IDLE_EXIT

    async def _run(self) -> None:
        attempt = 0
        idle_since = time.monotonic()
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if self._waiters:
                        idle_since = time.monotonic()
                    elif self._idle(idle_since):
                        # No await between this check and returning: no waiter can slip in.
                        self.ready.clear()
                        return
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        attempt = 0
                        self.ready.set()
                        self._recheck_all()
                    elif message["type"] == "message":
                        decision = parse_message(message["data"])
                        if decision is not None:
                            self._deliver(decision)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.ready.clear()
                if self._idle(idle_since):
                    return
                delay = _RECONNECT_DELAYS[min(attempt, len(_RECONNECT_DELAYS) - 1)]
                attempt += 1
                log.warning("transaction subscriber lost its connection (%r); retrying", exc)
                await asyncio.sleep(delay)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()


_async_hubs: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[int, str], AsyncHub]
] = weakref.WeakKeyDictionary()


def async_hub_for(client: Any, channel: str) -> AsyncHub:
    """The running loop's hub for ``client`` and ``channel``."""
    loop = asyncio.get_running_loop()
    hubs = _async_hubs.setdefault(loop, {})
    key = (id(client), channel)
    hub = hubs.get(key)
    if hub is None or hub.client is not client:
        hub = hubs[key] = AsyncHub(client, channel)
    return hub
