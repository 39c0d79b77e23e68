"""Pub/sub fan-out: one subscriber connection per process and client, for everything.

Breaker transitions and transaction decisions are published from inside the scripts
that make them. Every process keeps one pub/sub connection per Redis client (not one
per breaker or waiter), runs one background thread (sync) or one task per event loop
(asyncio) on it, and hands each message to the local listeners of the object it
concerns: a breaker's cached view, or the waiters of a transaction.

A message can be missed while a subscription is being made or re-made. So when the
server confirms a subscription, and when the connection drops, every listener's
``on_reset`` runs: breakers forget their cached view, waiters read the status again.
A hub whose listeners are all gone for ``IDLE_EXIT`` seconds closes its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from redisbreaker.immediate import Immediate, run_now
from redisbreaker.outage import Trouble, classify, describe, rate_limited
from redisbreaker.state import text_of

# A hub with no listeners for this long closes its connection and ends; the next
# listener starts it again (so idle processes and dropped clients hold nothing).
IDLE_EXIT = 5.0
_BACKOFF = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


class Listener(Protocol):
    def on_message(self, message: Any) -> None: ...
    def on_reset(self) -> None: ...


# Turns a payload into (the tag of the object it concerns, the decoded message).
Decoder = Callable[[bytes], "tuple[str, Any] | None"]


class _Dispatch:
    """Who listens to what, and the connection's bookkeeping; no I/O.

    Listeners are held weakly: a dropped breaker goes away by itself.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.listeners: dict[str, dict[str, weakref.WeakSet[Any]]] = {}
        self.decoders: dict[str, Decoder] = {}
        self.changed = True
        self.idle_since = time.monotonic()
        self._entries = 0
        self._sweep_at = 64

    def add(self, channel: str, tag: str, listener: Listener, decode: Decoder) -> None:
        with self._lock:
            self.decoders[channel] = decode
            by_tag = self.listeners.setdefault(channel, {})
            by_tag.setdefault(tag, weakref.WeakSet()).add(listener)
            self.changed = True
            self._entries += 1
            if self._entries >= self._sweep_at:
                self._sweep()

    def remove(self, channel: str, tag: str, listener: Listener) -> None:
        with self._lock:
            by_tag = self.listeners.get(channel, {})
            group = by_tag.get(tag)
            if group is not None:
                group.discard(listener)
                if not group:
                    del by_tag[tag]  # an id nobody waits on any more costs nothing

    def _sweep(self) -> None:
        """Drop the tags whose listeners were all garbage-collected (lock held).

        Runs when the number of adds since the last sweep doubles the live entries, so
        its cost is amortised over the adds and memory stays proportional to the live
        listeners, not to every name ever used.
        """
        live = 0
        for by_tag in self.listeners.values():
            for tag in [t for t, group in by_tag.items() if not group]:
                del by_tag[tag]
            live += len(by_tag)
        self._entries = live
        self._sweep_at = max(64, 2 * live)

    def size(self) -> int:
        """How many tags have an entry (for tests and metrics)."""
        with self._lock:
            return sum(len(by_tag) for by_tag in self.listeners.values())

    def channels_to_add(self, subscribed: set[str]) -> list[str]:
        if not self.changed and subscribed:
            return []
        with self._lock:
            self.changed = False
            return [c for c in self.listeners if c not in subscribed]

    def deliver(self, channel: str, payload: bytes) -> None:
        decode = self.decoders.get(channel)
        decoded = decode(payload) if decode else None
        if decoded is None:
            return
        tag, message = decoded
        with self._lock:
            targets = list(self.listeners.get(channel, {}).get(tag, ()))
        for listener in targets:
            listener.on_message(message)

    def reset_all(self) -> None:
        with self._lock:
            targets = [x for by_tag in self.listeners.values() for s in by_tag.values() for x in s]
        for listener in targets:
            listener.on_reset()

    def idle(self) -> bool:
        """True once no listener has been referenced for ``IDLE_EXIT`` seconds."""
        with self._lock:
            if any(len(s) for by_tag in self.listeners.values() for s in by_tag.values()):
                self.idle_since = time.monotonic()
                return False
            self._sweep()
            return time.monotonic() - self.idle_since >= IDLE_EXIT

    def handle(self, message: dict[str, Any] | None, connected: Any) -> None:
        """One message from the connection: a confirmed subscription, or a payload."""
        if message is None:
            return
        kind = message.get("type")
        if kind == "subscribe":
            connected.set()
            self.reset_all()  # anything published before the subscription was missed
        elif kind == "message":
            self.deliver(text_of(message["channel"]), message["data"])


class Hub(Protocol):
    """What listeners see of a hub (sync or asyncio)."""

    connected: Any  # set while the subscription is confirmed

    def add(self, channel: str, tag: str, listener: Listener, decode: Decoder) -> None: ...
    def remove(self, channel: str, tag: str, listener: Listener) -> None: ...


class _Serving:
    """The hub's connection loop, written once (see :mod:`redisbreaker.immediate`):
    the thread hub runs it with blocking primitives, the asyncio hub as a task."""

    client: Any
    dispatch: _Dispatch
    connected: Any

    def _subscribe(self, pubsub: Any, channels: list[str]) -> Awaitable[object]:
        raise NotImplementedError

    def _next_message(self, pubsub: Any) -> Awaitable[dict[str, Any] | None]:
        raise NotImplementedError

    def _pause(self, seconds: float) -> Awaitable[object]:
        raise NotImplementedError

    def _close(self, pubsub: Any) -> Awaitable[object]:
        raise NotImplementedError

    async def _serve(self) -> None:
        """Subscribe, deliver, reconnect with backoff; end once idle for ``IDLE_EXIT``."""
        attempt = 0
        while True:
            pubsub = self.client.pubsub()
            try:
                subscribed: set[str] = set()
                while True:
                    new = self.dispatch.channels_to_add(subscribed)
                    if new:
                        await self._subscribe(pubsub, new)
                        subscribed.update(new)
                    message = await self._next_message(pubsub)
                    if message is not None and message.get("type") == "subscribe":
                        attempt = 0
                    self.dispatch.handle(message, self.connected)
                    # No await between this check and returning: no listener slips in.
                    if message is None and self.dispatch.idle():
                        self.connected.clear()
                        return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any error: the hub must survive and reconnect
                self.connected.clear()
                self.dispatch.reset_all()
                if self.dispatch.idle():
                    return
                trouble = classify(exc)
                if trouble is Trouble.OUTAGE:
                    rate_limited.warning("events", "pub/sub connection lost (%r); retrying", exc)
                else:  # SUBSCRIBE denied, a bad certificate...: retried, but loudly
                    rate_limited.error(
                        "events", "pub/sub: %s (%s); events are not received, cached views "
                        "expire by their lease; retrying%s", trouble.value, describe(exc),
                        f"; {trouble.hint}" if trouble.hint else "",
                    )  # fmt: skip
                await self._pause(_BACKOFF[min(attempt, len(_BACKOFF) - 1)])
                attempt += 1
            finally:
                with contextlib.suppress(Exception):  # a broken connection may fail to close
                    await self._close(pubsub)


class EventHub(_Serving):
    """The sync hub: one daemon thread per process and client."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.pid = os.getpid()
        self.dispatch = _Dispatch()
        self.connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def add(self, channel: str, tag: str, listener: Listener, decode: Decoder) -> None:
        self.dispatch.add(channel, tag, listener, decode)
        self._ensure_thread()

    def remove(self, channel: str, tag: str, listener: Listener) -> None:
        self.dispatch.remove(channel, tag, listener)

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="redisbreaker-events", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        try:
            run_now(self._serve())
        finally:
            self.connected.clear()
            with self._start_lock:
                self._thread = None
            if not self.dispatch.idle():  # a listener arrived while we were leaving
                self._ensure_thread()

    def _subscribe(self, pubsub: Any, channels: list[str]) -> Immediate[object]:
        return Immediate(pubsub.subscribe(*channels))

    def _next_message(self, pubsub: Any) -> Immediate[dict[str, Any] | None]:
        return Immediate(pubsub.get_message(timeout=0.5))

    def _pause(self, seconds: float) -> Immediate[object]:
        time.sleep(seconds)
        return Immediate(None)

    def _close(self, pubsub: Any) -> Immediate[object]:
        return Immediate(pubsub.close())


class AsyncEventHub(_Serving):
    """The asyncio hub: one task per event loop and client."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.dispatch = _Dispatch()
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, channel: str, tag: str, listener: Listener, decode: Decoder) -> None:
        self.dispatch.add(channel, tag, listener, decode)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._serve())

    def remove(self, channel: str, tag: str, listener: Listener) -> None:
        self.dispatch.remove(channel, tag, listener)

    async def _subscribe(self, pubsub: Any, channels: list[str]) -> object:
        return await pubsub.subscribe(*channels)

    async def _next_message(self, pubsub: Any) -> dict[str, Any] | None:
        message: dict[str, Any] | None = await pubsub.get_message(timeout=0.5)
        return message

    def _pause(self, seconds: float) -> Awaitable[object]:
        return asyncio.sleep(seconds)

    async def _close(self, pubsub: Any) -> object:
        return await pubsub.aclose()


_sync_hubs: weakref.WeakKeyDictionary[Any, EventHub] = weakref.WeakKeyDictionary()
_async_hubs: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, weakref.WeakKeyDictionary[Any, AsyncEventHub]
] = weakref.WeakKeyDictionary()
_hubs_lock = threading.Lock()


def hub_for(client: Any) -> EventHub:
    """This process's hub for ``client`` (a new one after fork: threads do not survive it)."""
    with _hubs_lock:
        hub = _sync_hubs.get(client)
        if hub is None or hub.pid != os.getpid():
            hub = _sync_hubs[client] = EventHub(client)
        return hub


def async_hub_for(client: Any) -> AsyncEventHub:
    """The running event loop's hub for ``client``."""
    hubs = _async_hubs.setdefault(asyncio.get_running_loop(), weakref.WeakKeyDictionary())
    hub = hubs.get(client)
    if hub is None:
        hub = hubs[client] = AsyncEventHub(client)
    return hub
