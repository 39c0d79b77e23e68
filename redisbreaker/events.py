"""Pub/sub fan-out: one subscriber per process and client (per Cluster master), for everything.

Breaker transitions and transaction decisions are published from inside the scripts
that make them. Every process keeps one pub/sub hub per Redis client (not one per
breaker or waiter) and hands each message to the local listeners of the object it
concerns: a breaker's cached view, or the waiters of a transaction.

Channels (see :mod:`redisbreaker.keys`). On one server (standalone, Sentinel,
fakeredis) each prefix and kind has one channel, and the hub one connection with one
background thread (sync) or one task per event loop (asyncio). On Redis Cluster each
hash slot has its own channel and the hub subscribes with SSUBSCRIBE on the master that
owns the slot: one connection and one thread or task per master it listens to, routed
by the client's slot map, followed to a promoted replica after a failover. A node
without SSUBSCRIBE (Redis 6.2, which publishes with a broadcast PUBLISH) gets SUBSCRIBE.

Only channels someone listens to are subscribed: a channel whose last listener is gone
stays subscribed for ``IDLE_EXIT`` seconds (so waiters that come and go do not churn
subscriptions), then it is unsubscribed and forgotten; a connection with nothing left
to listen to is closed.

A message can be missed while a subscription is being made or re-made. So when the
server confirms the subscription of a channel, that channel's listeners' ``on_reset``
runs, and when a connection drops, every listener of its channels' does: breakers
forget their cached view, waiters read the status again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

import redis.asyncio.cluster
import redis.cluster
from redis.crc import key_slot

from redisbreaker.immediate import Immediate, run_now
from redisbreaker.keys import prefix_channels
from redisbreaker.outage import Trouble, classify, describe, rate_limited
from redisbreaker.state import text_of

# A channel nobody listens to any more stays subscribed this long (seconds); a hub
# with no channel left closes its connections and ends its threads or tasks. The next
# listener starts them again (so idle processes and dropped clients hold nothing).
IDLE_EXIT = 5.0
# How long a connection waits for a message before it looks at its channels again.
POLL = 0.5
_BACKOFF = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
# The tag of a listener that hears every object on its channel (no object's tag is
# empty: names are never empty). For watchers: ``redisbreaker watch``, the dashboard.
ANY = ""

_SUBSCRIBED = frozenset({"subscribe", "ssubscribe"})
_MESSAGE = frozenset({"message", "smessage"})
_UNSUBSCRIBED = frozenset({"unsubscribe", "sunsubscribe"})


class Listener(Protocol):
    def on_message(self, message: Any) -> None: ...
    def on_reset(self) -> None: ...


class Flag(Protocol):
    """A ``threading.Event`` or an ``asyncio.Event``, as far as the hub uses them."""

    def set(self) -> None: ...
    def clear(self) -> None: ...
    def is_set(self) -> bool: ...


# Turns a payload into (the tag of the object it concerns, the decoded message).
Decoder = Callable[[bytes], "tuple[str, Any] | None"]


def is_cluster(client: object) -> bool:
    """Whether ``client`` is a Redis Cluster client (sync or asyncio)."""
    return isinstance(client, redis.cluster.RedisCluster | redis.asyncio.cluster.RedisCluster)


class _Dispatch:
    """Who listens to what, which channels are wanted and which are confirmed; no I/O.

    Listeners are held weakly: a dropped breaker goes away by itself. ``ready(channel)``
    is set while the channel's subscription is confirmed; ``connected`` while every
    wanted channel's is.
    """

    def __init__(self, new_flag: Callable[[], Flag]) -> None:
        self._lock = threading.Lock()
        self._new_flag = new_flag
        self.listeners: dict[str, dict[str, weakref.WeakSet[Any]]] = {}
        self.decoders: dict[str, Decoder] = {}
        self.connected = new_flag()
        self._ready: dict[str, Flag] = {}
        self._owner: dict[str, object] = {}  # confirmed channel -> the link holding it
        self._empty_since: dict[str, float] = {}  # wanted channels with no listener left
        self._wanted: frozenset[str] = frozenset()
        self._pending = 0  # wanted channels not confirmed
        self._dirty = True
        self._check_at = 0.0
        self._entries = 0
        self._sweep_at = 64
        self._final: set[str] = set()  # channels whose messages are each tag's last

    # -- listeners (any thread) --------------------------------------------------------

    def add(
        self, channel: str, tag: str, listener: Listener, decode: Decoder, final: bool = False
    ) -> bool:
        """Register ``listener``; True if ``channel`` was not subscribed yet. ``final``:
        a message on ``channel`` is the last its tag ever gets (a transaction's
        decision), so delivering it drops the tag's listeners at once."""
        with self._lock:
            self.decoders[channel] = decode
            if final:
                self._final.add(channel)
            by_tag = self.listeners.setdefault(channel, {})
            by_tag.setdefault(tag, weakref.WeakSet()).add(listener)
            new = channel not in self._wanted
            if new or channel in self._empty_since:
                self._dirty = True
            self._entries += 1
            if self._entries >= self._sweep_at:
                self._sweep()
            return new

    def remove(self, channel: str, tag: str, listener: Listener) -> None:
        by_tag = self.listeners.get(channel)
        if by_tag is None or tag not in by_tag:
            return  # (dropped when its final message was delivered) no lock needed
        with self._lock:
            by_tag = self.listeners.get(channel, {})
            group = by_tag.get(tag)
            if group is not None:
                group.discard(listener)
                if not group:
                    del by_tag[tag]  # an id nobody waits on any more costs nothing
                    if not by_tag:
                        self._dirty = True  # the channel's linger starts

    def ready(self, channel: str) -> Flag:
        with self._lock:
            flag = self._ready.get(channel)
            if flag is None:
                flag = self._ready[channel] = self._new_flag()
            return flag

    def size(self) -> int:
        """How many tags have an entry (for tests and metrics)."""
        with self._lock:
            return sum(len(by_tag) for by_tag in self.listeners.values())

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
        self._dirty = True

    # -- the wanted channels (the links ask on every turn) -----------------------------

    def wanted(self, now: float) -> frozenset[str]:
        """The channels to hold: those with listeners, and those whose last listener
        left less than ``IDLE_EXIT`` ago. The same object while nothing changes."""
        with self._lock:
            if self._dirty or now >= self._check_at:
                self._recompute(now)
            return self._wanted

    def _recompute(self, now: float) -> None:
        self._sweep()
        wanted: set[str] = set()
        check_at = now + IDLE_EXIT  # garbage-collected listeners are noticed by then
        for channel in list(self.listeners):
            if self.listeners[channel]:
                self._empty_since.pop(channel, None)
                wanted.add(channel)
                continue
            since = self._empty_since.setdefault(channel, now)
            if now - since < IDLE_EXIT:
                wanted.add(channel)
                check_at = min(check_at, since + IDLE_EXIT)
            else:  # forgotten: unsubscribed by its link's next turn
                del self.listeners[channel]
                self.decoders.pop(channel, None)
                del self._empty_since[channel]
                self._owner.pop(channel, None)
                # The flag stays (cleared): a waiter may hold it already. Flags are few:
                # one per channel, and channels are per prefix, or per hash slot.
                flag = self._ready.get(channel)
                if flag is not None:
                    flag.clear()
        if wanted != self._wanted:
            self._wanted = frozenset(wanted)
        self._pending = sum(1 for c in self._wanted if c not in self._owner)
        self._dirty = False
        self._check_at = check_at
        self._update_connected()

    def _update_connected(self) -> None:
        if self._wanted and not self._pending:
            self.connected.set()
        else:
            self.connected.clear()

    # -- what the links report ---------------------------------------------------------

    def confirmed(self, channel: str, link: object) -> None:
        """The server confirmed ``link``'s subscription: anything published before it
        was missed, so the channel's listeners start over."""
        with self._lock:
            if channel not in self._wanted:
                return  # forgotten meanwhile; unsubscribed on the link's next turn
            if channel not in self._owner:
                self._pending -= 1
            self._owner[channel] = link
            self._update_connected()
        self._reset([channel])
        # The channel's flag only now: a listener blocked on it (a new waiter) hears its
        # reset first and starts with a read of its own, instead of reading twice.
        with self._lock:
            if self._owner.get(channel) is link:  # (not lost or forgotten meanwhile)
                flag = self._ready.get(channel)
                if flag is None:
                    flag = self._ready[channel] = self._new_flag()
                flag.set()

    def lost(self, channels: Iterable[str], link: object) -> None:
        """``link`` no longer holds ``channels`` (its connection dropped, or they moved
        to another master): their listeners start over."""
        dropped = []
        with self._lock:
            for channel in channels:
                if self._owner.get(channel) is link:
                    del self._owner[channel]
                    if channel in self._wanted:
                        self._pending += 1
                    flag = self._ready.get(channel)
                    if flag is not None:
                        flag.clear()
                dropped.append(channel)
            self._update_connected()
        self._reset(dropped)

    def deliver(self, channel: str, payload: bytes) -> None:
        decode = self.decoders.get(channel)
        decoded = decode(payload) if decode else None
        if decoded is None:
            return
        tag, message = decoded
        with self._lock:
            by_tag = self.listeners.get(channel, {})
            if channel in self._final:  # its listeners leave now, not one by one
                group = by_tag.pop(tag, ())
                if group and not by_tag:
                    self._dirty = True  # the channel's linger starts
            else:
                group = by_tag.get(tag, ())
            targets = [*group, *by_tag.get(ANY, ())]
        for listener in targets:
            listener.on_message(message)

    def _reset(self, channels: Iterable[str]) -> None:
        with self._lock:
            targets = [
                x for c in channels for group in self.listeners.get(c, {}).values() for x in group
            ]
        for listener in targets:
            listener.on_reset()


class Hub(Protocol):
    """What listeners see of a hub (sync or asyncio)."""

    connected: Any  # set while every wanted channel's subscription is confirmed

    def add(
        self, channel: str, tag: str, listener: Listener, decode: Decoder, final: bool = False
    ) -> None: ...
    def remove(self, channel: str, tag: str, listener: Listener) -> None: ...
    def ready(self, channel: str) -> Any: ...


class _Rerouted(Exception):
    """A link's master no longer holds its channels (they are routed elsewhere)."""


class _HubBase:
    """Channels, routing and links of one client; the shells start the links."""

    def __init__(self, client: Any, new_flag: Callable[[], Flag]) -> None:
        # Held weakly: the hub lives in a dictionary keyed weakly by its client, so a
        # strong reference would keep every client that ever had a hub (its pool, its
        # sockets) alive for good. A running link holds it (see _Link): a dropped
        # client goes once its hub has gone idle.
        self._client = weakref.ref(client)
        self.cluster = is_cluster(client)
        self.dispatch = _Dispatch(new_flag)
        self.connected: Any = self.dispatch.connected  # a threading or asyncio Event
        self.closed = False
        self.plain: set[str] = set()  # Cluster nodes that answered: no SSUBSCRIBE (6.2)
        self._lock = threading.Lock()
        self._links: dict[str, Any] = {}  # node name ("" on one server) -> its link
        self._topology = 0  # bumped when the client's slot map was refreshed
        self._routed: tuple[frozenset[str], int] | None = None
        self._by_node: dict[str, frozenset[str]] = {}
        self._node_of: dict[str, str] = {}
        self.version = 0  # bumped whenever a channel's route or presence changes

    @property
    def client(self) -> Any:
        client = self._client()
        if client is None:
            raise ReferenceError("the hub's Redis client was garbage-collected")
        return client

    def add(
        self, channel: str, tag: str, listener: Listener, decode: Decoder, final: bool = False
    ) -> None:
        new = self.dispatch.add(channel, tag, listener, decode, final)
        self._start_links()
        if new:  # subscribe at once rather than at the link's next turn
            link = self._links.get(self._node_of.get(channel, ""))
            if link is not None:
                link.kick()

    def add_all(
        self, channels: Iterable[str], tag: str, listener: Listener, decode: Decoder
    ) -> None:
        """:meth:`add` for many channels, routed once (a watcher's 32,768 on a Cluster)."""
        for channel in channels:
            self.dispatch.add(channel, tag, listener, decode)
        self._start_links()

    def remove(self, channel: str, tag: str, listener: Listener) -> None:
        self.dispatch.remove(channel, tag, listener)

    def ready(self, channel: str) -> Any:
        """Set while ``channel``'s subscription is confirmed."""
        return self.dispatch.ready(channel)

    @property
    def connections(self) -> int:
        """How many subscriber connections are open or opening (for tests and metrics)."""
        with self._lock:
            return len(self._links)

    def endpoints(self) -> list[tuple[str, int]]:
        """(host, port) of each subscriber connection that is connected now (for tests
        and diagnostics: which server the subscriptions are on)."""
        with self._lock:
            links = list(self._links.values())
        found = []
        for link in links:
            connection = getattr(link._live, "connection", None)
            if connection is not None and getattr(connection, "_sock", None) is not None:
                found.append((str(connection.host), int(connection.port)))
        return found

    def close(self) -> None:
        """Stop every link at its next turn (for watchers; shared hubs end when idle)."""
        self.closed = True

    def channels_for(self, node: str) -> tuple[int, frozenset[str]]:
        """(routing version, the channels ``node``'s link must hold now)."""
        wanted = self.dispatch.wanted(time.monotonic())
        with self._lock:
            if self.closed:
                return self.version, frozenset()
            if self._routed != (wanted, self._topology):  # (an identity check, mostly)
                self._route(wanted)
            return self.version, self._by_node.get(node, frozenset())

    def _route(self, wanted: frozenset[str]) -> None:
        """Assign each wanted channel to a link (lock held): the one server's, or the
        master owning the channel's slot by the client's slot map ("" if none does yet)."""
        by_node: dict[str, set[str]] = {}
        node_of: dict[str, str] = {}
        by_slot: dict[int, str] = {}
        for channel in wanted:
            name = ""
            if self.cluster:
                slot = key_slot(channel.encode())
                name = by_slot.get(slot, "")
                if slot not in by_slot:
                    with contextlib.suppress(Exception):  # not covered (yet): link "" asks
                        name = by_slot[slot] = str(self.client.get_node_from_key(channel).name)
            by_node.setdefault(name, set()).add(channel)
            node_of[channel] = name
        self._by_node = {name: frozenset(chs) for name, chs in by_node.items()}
        self._node_of = node_of
        self._routed = (wanted, self._topology)
        self.version += 1

    def topology_changed(self) -> None:
        with self._lock:
            self._topology += 1

    def _start_links(self) -> None:
        """Make sure every node with channels to hold has a running link."""
        self.channels_for("")  # (re)routes if needed
        with self._lock:
            if self.closed or self._client() is None:  # (nobody can listen through it)
                return
            started = [
                self._links.setdefault(name, self._new_link(name))
                for name, channels in self._by_node.items()
                if channels and name not in self._links
            ]
        for link in started:
            link.start()

    def _new_link(self, node: str) -> Any:
        raise NotImplementedError

    def _link_ended(self, node: str, link: object) -> None:
        with self._lock:
            if self._links.get(node) is link:
                del self._links[node]
        self._start_links()  # a listener arrived while it was leaving


class _Link:
    """One subscriber connection (to the server, or to one Cluster master) and its loop,
    written once (see :mod:`redisbreaker.immediate`): the thread link runs it with
    blocking primitives, the asyncio link as a task."""

    def __init__(self, hub: _HubBase, node: str) -> None:
        self.hub = hub
        self.client = hub.client  # held while the link runs (the hub holds it weakly)
        self.node = node
        self.subscribed: set[str] = set()
        self._seen = -1
        # Unsubscribes sent and not yet confirmed. (A kick's thread and the loop's may
        # both touch it; a lost count only makes an unsubscribe look unasked-for, which
        # costs a reconnect, never an event.)
        self._leaving: Counter[str] = Counter()
        self._live: Any = None  # the connection others may send a subscription on

    # -- primitives the shells give --------------------------------------------------

    def _open(self) -> Awaitable[Any]:
        """A new pub/sub object of this link's server or master (no I/O yet)."""
        raise NotImplementedError

    def _call(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        """Call a pub/sub method (awaiting it in asyncio)."""
        raise NotImplementedError

    def _next_message(self, pubsub: Any) -> Awaitable[dict[str, Any] | None]:
        raise NotImplementedError

    def _reconciled(self, pubsub: Any) -> Awaitable[object]:
        """:meth:`_reconcile`, serialised with other threads' :meth:`kick`."""
        raise NotImplementedError

    def _retire(self) -> None:
        """No other thread may send on the current connection from now on."""
        self._live = None

    def _refresh_topology(self) -> Awaitable[object]:
        """Ask the Cluster client to read its slot map again."""
        raise NotImplementedError

    def _pause(self, seconds: float) -> Awaitable[object]:
        raise NotImplementedError

    def _close(self, pubsub: Any) -> Awaitable[object]:
        raise NotImplementedError

    # -- the loop --------------------------------------------------------------------

    @property
    def sharded(self) -> bool:
        return self.hub.cluster and self.node not in self.hub.plain

    async def _reconcile(self, pubsub: Any) -> None:
        """Subscribe what this link must hold and does not, unsubscribe the rest."""
        version, want = self.hub.channels_for(self.node)
        if version == self._seen:
            return
        self._seen = version
        new, gone = want - self.subscribed, self.subscribed - want
        self.subscribed = set(want)  # before any send: a concurrent kick sends nothing twice
        if gone:
            self._leaving.update(gone)
            self.hub.dispatch.lost(gone, self)
        sharded = self.sharded
        if new:
            for group in _by_slot(new) if sharded else [sorted(new)]:
                await self._call(pubsub.ssubscribe if sharded else pubsub.subscribe, *group)
        if gone:
            for group in _by_slot(gone) if sharded else [sorted(gone)]:
                await self._call(pubsub.sunsubscribe if sharded else pubsub.unsubscribe, *group)

    def _handle(self, message: dict[str, Any]) -> bool:
        """One message from the connection; True for a confirmed subscription."""
        kind = text_of(message.get("type"))
        channel = text_of(message.get("channel"))
        if kind in _MESSAGE:
            self.hub.dispatch.deliver(channel, message["data"])
        elif kind in _SUBSCRIBED:
            if channel in self.subscribed:
                self.hub.dispatch.confirmed(channel, self)
                return True
        elif kind in _UNSUBSCRIBED:
            if self._leaving[channel] > 0:
                self._leaving[channel] -= 1
                if not self._leaving[channel]:
                    del self._leaving[channel]
            elif channel in self.subscribed:
                # Not asked for: the master gave the slot away (a failover, a migration).
                raise _Rerouted(f"{self.node} dropped {channel}")
        return False

    async def _serve(self) -> None:
        """Subscribe, deliver, reconnect with backoff; end once nothing is left to hold."""
        hub, attempt = self.hub, 0
        while True:
            pubsub = None
            self.subscribed, self._seen = set(), -1
            self._leaving.clear()
            try:
                if not hub.channels_for(self.node)[1]:
                    return  # no await between this check and returning: no channel slips in
                pubsub = await self._open()
                await self._reconciled(pubsub)  # connects: others may send only after
                self._live = pubsub
                while True:
                    await self._reconciled(pubsub)  # (nothing to do unless channels changed)
                    if not hub.channels_for(self.node)[1]:
                        return
                    message = await self._next_message(pubsub)
                    if message is not None and self._handle(message):
                        attempt = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any error: the link must survive and reconnect
                self._retire()
                hub.dispatch.lost(self.subscribed, self)
                if self.sharded and _no_ssubscribe(exc):
                    hub.plain.add(self.node)  # Redis 6.2: its scripts PUBLISH
                    continue
                if hub.cluster:
                    self._log(exc, quiet=isinstance(exc, _Rerouted))
                    with contextlib.suppress(Exception):  # no node answers: retried below
                        await self._refresh_topology()
                    hub.topology_changed()
                    if not hub.channels_for(self.node)[1]:
                        return  # its channels are another master's now
                else:
                    self._log(exc)
                await self._pause(_BACKOFF[min(attempt, len(_BACKOFF) - 1)])
                attempt += 1
            finally:
                self._retire()
                if pubsub is not None:
                    with contextlib.suppress(Exception):  # a broken connection may fail to close
                        await self._close(pubsub)

    def _log(self, exc: Exception, *, quiet: bool = False) -> None:
        if quiet:
            return
        trouble = classify(exc)
        where = f" ({self.node})" if self.node else ""
        if trouble is Trouble.OUTAGE or isinstance(exc, _Rerouted):
            rate_limited.warning("events", "pub/sub connection lost%s (%r); retrying", where, exc)
        else:  # SUBSCRIBE denied, a bad certificate...: retried, but loudly
            rate_limited.error(
                "events", "pub/sub%s: %s (%s); events are not received, cached views "
                "expire by their lease; retrying%s", where, trouble.value, describe(exc),
                f"; {trouble.hint}" if trouble.hint else "",
            )  # fmt: skip


def _by_slot(channels: Iterable[str]) -> list[list[str]]:
    """Channels grouped by hash slot: one SSUBSCRIBE may name one slot's channels only."""
    groups: dict[int, list[str]] = {}
    for channel in sorted(channels):
        groups.setdefault(key_slot(channel.encode()), []).append(channel)
    return list(groups.values())


def _no_ssubscribe(exc: Exception) -> bool:
    text = str(exc).lower()
    return "unknown command" in text and "ssubscribe" in text


# -- the thread shell -------------------------------------------------------------------


class _ThreadLink(_Link):
    hub: EventHub

    def __init__(self, hub: EventHub, node: str) -> None:
        super().__init__(hub, node)
        self._send_lock = threading.Lock()

    def start(self) -> None:
        name = "redisbreaker-events" + (f"-{self.node}" if self.node else "")
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        try:
            run_now(self._serve())
        finally:
            self.hub._link_ended(self.node, self)

    def kick(self) -> None:
        """From a listener's thread: send the new subscription now (redis-py lets one
        thread send on a pub/sub connection while another reads it)."""
        pubsub = self._live
        if pubsub is None or not self._send_lock.acquire(timeout=0.1):
            return  # connecting, or busy: the loop's next turn subscribes it
        try:
            if self._live is pubsub:
                run_now(self._reconcile(pubsub))
        except Exception:  # the loop sees the broken connection and reconnects
            pass
        finally:
            self._send_lock.release()

    def _open(self) -> Immediate[Any]:
        client = self.client
        if not self.node:
            if self.hub.cluster:
                raise _Rerouted("no master owns the slot yet")
            return Immediate(client.pubsub())
        node = client.get_node(node_name=self.node)
        if node is None:
            raise _Rerouted(f"{self.node} left the cluster")
        return Immediate(client.get_redis_connection(node).pubsub())

    def _call(self, fn: Callable[..., Any], *args: Any) -> Immediate[Any]:
        return Immediate(fn(*args))

    def _next_message(self, pubsub: Any) -> Immediate[dict[str, Any] | None]:
        return Immediate(pubsub.get_message(timeout=POLL))

    def _reconciled(self, pubsub: Any) -> Immediate[object]:
        with self._send_lock:
            return Immediate(run_now(self._reconcile(pubsub)))

    def _retire(self) -> None:
        with self._send_lock:
            self._live = None

    def _refresh_topology(self) -> Immediate[object]:
        return Immediate(self.client.nodes_manager.initialize())

    def _pause(self, seconds: float) -> Immediate[object]:
        time.sleep(seconds)
        return Immediate(None)

    def _close(self, pubsub: Any) -> Immediate[object]:
        return Immediate(pubsub.close())


class EventHub(_HubBase):
    """The sync hub: one daemon thread per connection (one, or one per Cluster master)."""

    def __init__(self, client: Any) -> None:
        super().__init__(client, threading.Event)
        self.pid = os.getpid()

    def _new_link(self, node: str) -> _ThreadLink:
        return _ThreadLink(self, node)

    def close(self, timeout: float = 5.0) -> None:
        """Stop every link; return once their connections are closed (or ``timeout``)."""
        super().close()
        deadline = time.monotonic() + timeout
        while self._links and time.monotonic() < deadline:
            time.sleep(0.02)


class PrefixFeed:
    """Every breaker transition and transaction decision of a prefix, as it happens: for
    watchers (``redisbreaker watch``, the dashboard), on a hub of their own.

    ``decoders`` maps each kind (``"cb"``, ``"tx"``) to its payload decoder; each event
    calls ``on_event(kind, decoded)`` on a hub thread, and ``on_reset()`` runs when
    events may have been missed (a subscription made or lost: re-read what is shown).
    On one server it subscribes the prefix's channel of each kind; on Redis Cluster the
    channel of every hash slot (SSUBSCRIBE, 16,384 per kind spread over the masters),
    so that no object is missed, however short-lived, at the price of those
    subscriptions (a few MB of server memory per watcher).
    """

    def __init__(
        self,
        client: Any,
        prefix: str,
        decoders: dict[str, Decoder],
        on_event: Callable[[str, Any], None],
        on_reset: Callable[[], None] = lambda: None,
    ) -> None:
        self.hub = EventHub(client)
        self._listeners = [_FeedListener(kind, on_event, on_reset) for kind in decoders]
        for listener in self._listeners:
            channels = prefix_channels(prefix, listener.kind, sharded=self.hub.cluster)
            self.hub.add_all(channels, ANY, listener, decoders[listener.kind])

    @property
    def connected(self) -> Any:
        """A ``threading.Event``, set while every subscription is confirmed."""
        return self.hub.connected

    def close(self, timeout: float = 5.0) -> None:
        self.hub.close(timeout)


class _FeedListener:
    def __init__(
        self, kind: str, on_event: Callable[[str, Any], None], on_reset: Callable[[], None]
    ) -> None:
        self.kind = kind
        self._on_event = on_event
        self._on_reset = on_reset

    def on_message(self, message: Any) -> None:
        self._on_event(self.kind, message)

    def on_reset(self) -> None:
        self._on_reset()


# -- the asyncio shell ------------------------------------------------------------------


class _TaskLink(_Link):
    hub: AsyncEventHub

    def __init__(self, hub: AsyncEventHub, node: str) -> None:
        super().__init__(hub, node)
        self._pool: Any = None
        self._task: asyncio.Task[None] | None = None  # held here: the loop holds tasks weakly
        self._kicks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            await self._serve()
        except asyncio.CancelledError:  # the loop is closing: nothing to start again
            with self.hub._lock:
                self.hub._links.pop(self.node, None)
            raise
        self.hub._link_ended(self.node, self)

    def kick(self) -> None:
        """Send the new subscription now, beside the loop's pending read (asyncio lets one
        task write a connection while another reads it)."""
        pubsub = self._live
        if pubsub is not None:
            task = asyncio.get_running_loop().create_task(self._kicked(pubsub))
            self._kicks.add(task)
            task.add_done_callback(self._kicks.discard)

    async def _kicked(self, pubsub: Any) -> None:
        with contextlib.suppress(Exception):  # the loop sees the broken connection
            if self._live is pubsub:
                await self._reconcile(pubsub)

    async def _open(self) -> Any:
        client = self.client
        if not self.node:
            if self.hub.cluster:  # a new client has no slot map yet: read it, route again
                raise _Rerouted("no master owns the slot yet")
            return client.pubsub()
        node = client.get_node(node_name=self.node)
        if node is None:
            raise _Rerouted(f"{self.node} left the cluster")
        # A connection of our own to the master, with the node's settings (TLS, auth,
        # timeouts): the node's pool serves the cluster's commands.
        self._pool = redis.asyncio.ConnectionPool(
            connection_class=node.connection_class, max_connections=1, **node.connection_kwargs
        )
        return redis.asyncio.Redis(connection_pool=self._pool).pubsub()

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await fn(*args)

    async def _next_message(self, pubsub: Any) -> dict[str, Any] | None:
        message: dict[str, Any] | None = await pubsub.get_message(timeout=POLL)
        return message

    async def _reconciled(self, pubsub: Any) -> None:
        await self._reconcile(pubsub)

    async def _refresh_topology(self) -> None:
        await self.client.nodes_manager.initialize()

    def _pause(self, seconds: float) -> Awaitable[object]:
        return asyncio.sleep(seconds)

    async def _close(self, pubsub: Any) -> None:
        try:
            await pubsub.aclose()
        finally:
            pool, self._pool = self._pool, None
            if pool is not None:
                await pool.aclose()


class AsyncEventHub(_HubBase):
    """The asyncio hub: one task per connection (one, or one per Cluster master), per
    event loop and client."""

    def __init__(self, client: Any) -> None:
        super().__init__(client, asyncio.Event)

    def _new_link(self, node: str) -> _TaskLink:
        return _TaskLink(self, node)


# -- one hub per process (or event loop) and client -------------------------------------

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
