"""Pub/sub fan-out: one subscriber connection per process and client.

Breakers publish each transition from inside the script that makes it. Every
process keeps one pub/sub connection per Redis client (not one per breaker), runs
one background thread (sync) or task (asyncio) on it, and hands each event to the
local objects of that breaker. When the connection drops and comes back, every
subscriber is told to forget its cached view: events may have been missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from redisbreaker.outage import rate_limited


class Listener(Protocol):
    def on_message(self, message: Any) -> None: ...
    def on_reset(self) -> None: ...


# Turns a payload into (the hash tag of the object it concerns, the decoded message).
Decoder = Callable[[bytes], "tuple[str, Any] | None"]


class _Dispatch:
    """Who listens to what; no I/O. Listeners are held weakly: a dropped breaker goes away."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.listeners: dict[str, dict[str, weakref.WeakSet[Any]]] = {}
        self.decoders: dict[str, Decoder] = {}
        self.changed = True

    def add(self, channel: str, tag: str, listener: Listener, decode: Decoder) -> None:
        with self._lock:
            self.decoders[channel] = decode
            by_tag = self.listeners.setdefault(channel, {})
            by_tag.setdefault(tag, weakref.WeakSet()).add(listener)
            self.changed = True

    def channels(self) -> list[str]:
        with self._lock:
            self.changed = False
            return list(self.listeners)

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

    def alive(self) -> bool:
        """Whether any listener is still referenced (listeners are held weakly)."""
        with self._lock:
            return any(len(s) for by_tag in self.listeners.values() for s in by_tag.values())

    def reset_all(self) -> None:
        with self._lock:
            targets = [x for by_tag in self.listeners.values() for s in by_tag.values() for x in s]
        for listener in targets:
            listener.on_reset()


def _text(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class EventHub:
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

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="redisbreaker-events", daemon=True
                    )
                    self._thread.start()

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self.connected.clear()
            with self._start_lock:
                self._thread = None
            if self.dispatch.alive():  # a listener arrived while we were leaving
                self._ensure_thread()

    def _loop(self) -> None:
        backoff = 0.05
        while True:
            pubsub = None
            try:
                pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                subscribed: set[str] = set()
                while True:
                    if self.dispatch.changed or not subscribed:
                        new = [c for c in self.dispatch.channels() if c not in subscribed]
                        if new:
                            pubsub.subscribe(*new)
                            subscribed.update(new)
                            if not self.connected.is_set():
                                self.connected.set()
                                backoff = 0.05
                            # Anything published before the subscription was missed.
                            self.dispatch.reset_all()
                    message = pubsub.get_message(timeout=0.5)
                    if message and message.get("type") == "message":
                        self.dispatch.deliver(_text(message["channel"]), message["data"])
                    elif not self.dispatch.alive():
                        return  # every breaker using this hub is gone
            except Exception as exc:  # any error: the thread must survive and reconnect
                self.connected.clear()
                self.dispatch.reset_all()
                rate_limited.warning("events", "pub/sub connection lost (%r); reconnecting", exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):  # a broken connection may fail to close
                        pubsub.close()


class AsyncEventHub:
    """The asyncio hub: one task per event loop and client."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.dispatch = _Dispatch()
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, channel: str, tag: str, listener: Listener, decode: Decoder) -> None:
        self.dispatch.add(channel, tag, listener, decode)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                subscribed: set[str] = set()
                while True:
                    if self.dispatch.changed or not subscribed:
                        new = [c for c in self.dispatch.channels() if c not in subscribed]
                        if new:
                            await pubsub.subscribe(*new)
                            subscribed.update(new)
                            self.connected.set()
                            backoff = 0.05
                            self.dispatch.reset_all()
                    message = await pubsub.get_message(timeout=0.5)
                    if message and message.get("type") == "message":
                        self.dispatch.deliver(_text(message["channel"]), message["data"])
                    elif not self.dispatch.alive():
                        return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any error: the task must survive and reconnect
                self.connected.clear()
                self.dispatch.reset_all()
                rate_limited.warning("events", "pub/sub connection lost (%r); reconnecting", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):  # a broken connection may fail to close
                    await pubsub.aclose()


_sync_hubs: weakref.WeakKeyDictionary[Any, EventHub] = weakref.WeakKeyDictionary()
_async_hubs: weakref.WeakKeyDictionary[Any, AsyncEventHub] = weakref.WeakKeyDictionary()
_hubs_lock = threading.Lock()


def hub_for(client: Any) -> EventHub:
    """This process's hub for ``client`` (a new one after fork: threads do not survive it)."""
    with _hubs_lock:
        hub = _sync_hubs.get(client)
        if hub is None or hub.pid != os.getpid():
            hub = _sync_hubs[client] = EventHub(client)
        return hub


def async_hub_for(client: Any) -> AsyncEventHub:
    with _hubs_lock:
        hub = _async_hubs.get(client)
        if hub is None:
            hub = _async_hubs[client] = AsyncEventHub(client)
        return hub
