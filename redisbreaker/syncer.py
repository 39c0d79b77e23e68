"""Background sync: a process's busy breakers refreshed together, off the call path.

A process trusts its cached view of a breaker for ``sync_interval``; the view must then
be refreshed, and the successes counted meanwhile carried to Redis. Left to the calls,
that is one script call per breaker per process per interval, made by whichever call
finds the view expired (it waits the round trip), and each one a command of its own:
Redis spends most of a sync's CPU reading and answering the command, not running it
(benchmarks/README.md, the capacity model). Here one thread per process and client
(one task per event loop and client, for asyncio breakers) wakes ten times per
interval and sends every breaker whose view is about to end, and that counted
something since its last script call (with those whose view is half over: they fall
into step), in one ``breaker_flush`` call (up to
:data:`CHUNK` breakers each): each breaker's step is ``breaker_report``'s, as its
``sync()`` is. A busy breaker's calls then never wait for a sync, and a breaker nobody
calls costs nothing.

On Redis Cluster a script may only touch keys of one hash slot, and each breaker has
its own: there each due breaker is its own ``breaker_flush`` (EVALSHA), all in one
pipeline, which the client sends as one round trip per master. A breaker whose clock
a test drives (``set_clock``), or made with ``background_sync=False``, syncs on the
call path, as before. A flush that fails is each breaker's failed call (its outage
policy applies, as it would to its own sync).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from redis.exceptions import NoScriptError

from redisbreaker.breaker_core import BreakerCore, ScriptCall
from redisbreaker.events import is_cluster
from redisbreaker.options import BreakerOptions

logger = logging.getLogger("redisbreaker")

TICK_FRACTION = 0.1  # the syncer wakes 10 times per (shortest) sync_interval
MIN_TICK, MAX_TICK = 0.005, 1.0  # seconds
# A call that goes anyway also takes the breakers whose view has less than this share
# of its sync_interval left: a process's busy breakers fall into step, one call each time.
ALONG = 0.5
CHUNK = 100  # breakers per breaker_flush call: bounds one script's run (~2 ms)


class Synced(Protocol):
    """What the syncer needs of a breaker (both shells have it)."""

    options: BreakerOptions

    @property
    def core(self) -> BreakerCore: ...

    @property
    def client(self) -> Any: ...

    def flush_caller(self) -> Any: ...

    def settle_background(self, call: ScriptCall, reply: Any) -> Any:
        """Take the reply in (the asyncio shell's returns an awaitable)."""


Due = tuple[Synced, ScriptCall]


class Registry:
    """The breakers one syncer looks after, and which are due (no I/O)."""

    def __init__(self) -> None:
        self._breakers: weakref.WeakSet[Synced] = weakref.WeakSet()
        self._lock = threading.Lock()

    def add(self, breaker: Synced) -> None:
        with self._lock:
            self._breakers.add(breaker)

    def members(self) -> list[Synced]:
        with self._lock:
            return list(self._breakers)

    def tick(self, breakers: Sequence[Synced]) -> float:
        """Seconds between looks: a tenth of the shortest ``sync_interval``."""
        if not breakers:
            return MAX_TICK
        shortest = min(b.options.sync_interval for b in breakers)
        return min(MAX_TICK, max(MIN_TICK, shortest * TICK_FRACTION))

    def due(self, breakers: Sequence[Synced], lead: float) -> list[Due]:
        """Each breaker whose view ends within ``lead`` and that counted something, with
        the call that syncs it (the breaker holds the sender role when it carries
        outcomes: its ``settle_background`` hands it back). When any is due, those
        with less than :data:`ALONG` of their interval left come along: synced a
        little early, they fall into step with the others, so a process's busy
        breakers soon go in one call per interval instead of one call each."""
        out: list[Due] = []
        rest: list[Synced] = []
        for breaker in breakers:
            core = breaker.core
            if core.background:
                call = core.background_call(core.now(), lead)
                if call is not None:
                    out.append((breaker, call))
                else:
                    rest.append(breaker)
        if out:
            for breaker in rest:
                core = breaker.core
                call = core.background_call(core.now(), ALONG * core.options.sync_interval)
                if call is not None:
                    out.append((breaker, call))
        return out


def chunks(due: list[Due]) -> Iterator[list[Due]]:
    for start in range(0, len(due), CHUNK):
        yield due[start : start + CHUNK]


def pack(chunk: Sequence[Due]) -> tuple[list[Any], list[Any]]:
    """``breaker_flush``'s KEYS and ARGV for ``chunk`` (see ``lua/breaker_flush.lua``)."""
    keys: list[Any] = []
    args: list[Any] = [len(chunk)]
    for breaker, call in chunk:
        keys += breaker.core.key_list
        args += [len(call.args), *call.args]
    return keys, args


def flush_commands(chunk: Sequence[Due], sha: str) -> list[list[Any]]:
    """On Redis Cluster: one ``EVALSHA breaker_flush`` per breaker (its keys share one
    slot; a script may not touch several), for a pipeline that the client sends as
    one round trip per master."""
    out = []
    for due in chunk:
        keys, args = pack([due])
        out.append(["EVALSHA", sha, len(keys), *keys, *args])
    return out


def unpack_cluster(results: Sequence[Any]) -> tuple[list[Any], list[int]]:
    """Each breaker's reply from a Cluster pipeline's results, and the indexes of the
    breakers whose master lacked the script (NOSCRIPT: load it and send them again)."""
    replies: list[Any] = []
    missing: list[int] = []
    for i, result in enumerate(results):
        if isinstance(result, NoScriptError):
            missing.append(i)
        replies.append(result[0] if isinstance(result, list) and len(result) == 1 else result)
    return replies, missing


class ClusterRounds:
    """A Cluster flush's rounds (no I/O): the first sends every breaker; a second, after
    the script is loaded on every master, sends again those whose master lacked it."""

    def __init__(self, chunk: Sequence[Due], sha: str) -> None:
        self.chunk, self.sha = chunk, sha
        self.replies: list[Any] = [None] * len(chunk)
        self.todo = list(range(len(chunk)))
        self.round = 0

    def commands(self) -> list[list[Any]]:
        return flush_commands([self.chunk[i] for i in self.todo], self.sha)

    def take(self, results: Sequence[Any]) -> bool:
        """Note a round's results; whether another round is due (load the script first)."""
        found, missing = unpack_cluster(results)
        for i, reply in zip(self.todo, found, strict=True):
            self.replies[i] = reply
        self.round += 1
        self.todo = [self.todo[i] for i in missing]
        return bool(self.todo) and self.round < 2


def _settle_failed(breaker: Synced, call: ScriptCall) -> None:
    """Taking a reply in raised (a defect): hand back what the call held, so the
    breaker's own calls carry on."""
    breaker.core.abandoned(call)
    logger.exception("redisbreaker: background sync of %r failed", breaker.core.name)


class Syncer:
    """One process's background syncer for one sync client: a daemon thread that runs
    while any of its breakers lives."""

    def __init__(self, client: Any) -> None:
        self.pid = os.getpid()
        # (not the client itself: this syncer lives in a dictionary keyed weakly by it)
        self.cluster = is_cluster(client)
        self.registry = Registry()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, breaker: Synced) -> None:
        self.registry.add(breaker)
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="redisbreaker-sync", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            breakers = self.registry.members()
            if not breakers:
                with self._lock:
                    if not self.registry.members():
                        self._thread = None
                        return
                continue
            tick = self.registry.tick(breakers)
            del breakers  # hold no breaker while asleep: one dropped meanwhile may go
            time.sleep(tick)
            try:
                self.sync_due(tick)
            except Exception:  # never let the thread die; the calls sync by themselves
                logger.exception("redisbreaker: background sync failed")

    def sync_due(self, lead: float) -> int:
        """Send every due breaker's sync; how many were due."""
        due = self.registry.due(self.registry.members(), lead)
        for chunk in chunks(due):
            self._send(chunk)
        return len(due)

    def _send(self, chunk: list[Due]) -> None:
        """Every breaker in ``chunk`` gets its reply or an error: each holds what its
        call took (its outcomes, the sender role) until then."""
        try:
            replies = self._cluster_replies(chunk) if self.cluster else self._replies(chunk)
        except Exception as exc:
            replies = [exc] * len(chunk)
        for (breaker, call), reply in zip(chunk, replies, strict=True):
            try:
                breaker.settle_background(call, reply)
            except Exception:
                _settle_failed(breaker, call)

    def _replies(self, chunk: list[Due]) -> list[Any]:
        keys, args = pack(chunk)
        replies: list[Any] = chunk[0][0].flush_caller()(keys=keys, args=args)
        return replies

    def _cluster_replies(self, chunk: list[Due]) -> list[Any]:
        first = chunk[0][0]
        script = first.flush_caller().script  # EVALSHA on a Cluster
        rounds = ClusterRounds(chunk, script.sha)
        while True:
            pipe = first.client.pipeline()
            for command in rounds.commands():
                pipe.execute_command(*command)
            if not rounds.take(pipe.execute(raise_on_error=False)):
                return rounds.replies
            first.client.script_load(script.script)  # every master


class AsyncSyncer:
    """The asyncio twin: one task per event loop and client."""

    def __init__(self, client: Any) -> None:
        self.cluster = is_cluster(client)
        self.registry = Registry()
        self._task: asyncio.Task[None] | None = None

    def add(self, breaker: Synced) -> None:
        self.registry.add(breaker)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            breakers = self.registry.members()
            if not breakers:
                return
            tick = self.registry.tick(breakers)
            del breakers
            await asyncio.sleep(tick)
            try:
                await self.sync_due(tick)
            except Exception:
                logger.exception("redisbreaker: background sync failed")

    async def sync_due(self, lead: float) -> int:
        due = self.registry.due(self.registry.members(), lead)
        for chunk in chunks(due):
            await self._send(chunk)
        return len(due)

    async def _send(self, chunk: list[Due]) -> None:
        try:
            if self.cluster:
                replies = await self._cluster_replies(chunk)
            else:
                replies = await self._replies(chunk)
        except Exception as exc:
            replies = [exc] * len(chunk)
        except BaseException:  # cancelled (the loop is closing): hand everything back
            for breaker, call in chunk:
                breaker.core.abandoned(call)
            raise
        for (breaker, call), reply in zip(chunk, replies, strict=True):
            try:
                await breaker.settle_background(call, reply)
            except Exception:
                _settle_failed(breaker, call)

    async def _replies(self, chunk: list[Due]) -> list[Any]:
        keys, args = pack(chunk)
        replies: list[Any] = await chunk[0][0].flush_caller()(keys=keys, args=args)
        return replies

    async def _cluster_replies(self, chunk: list[Due]) -> list[Any]:
        first = chunk[0][0]
        script = first.flush_caller().script
        rounds = ClusterRounds(chunk, script.sha)
        while True:
            pipe = first.client.pipeline()
            for command in rounds.commands():
                pipe.execute_command(*command)
            if not rounds.take(await pipe.execute(raise_on_error=False)):
                return rounds.replies
            await first.client.script_load(script.script)


# -- one syncer per process (or event loop) and client ----------------------------------

_syncers: weakref.WeakKeyDictionary[Any, Syncer] = weakref.WeakKeyDictionary()
_async_syncers: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, weakref.WeakKeyDictionary[Any, AsyncSyncer]
] = weakref.WeakKeyDictionary()
_syncers_lock = threading.Lock()


def syncer_for(client: Any) -> Syncer:
    """This process's syncer for ``client`` (a new one after fork)."""
    with _syncers_lock:
        syncer = _syncers.get(client)
        if syncer is None or syncer.pid != os.getpid():
            syncer = _syncers[client] = Syncer(client)
        return syncer


def async_syncer_for(client: Any) -> AsyncSyncer:
    """The running event loop's syncer for ``client``."""
    syncers = _async_syncers.setdefault(asyncio.get_running_loop(), weakref.WeakKeyDictionary())
    syncer = syncers.get(client)
    if syncer is None:
        syncer = syncers[client] = AsyncSyncer(client)
    return syncer


def _after_fork_in_child() -> None:
    # The parent's syncer threads are gone, and a lock one of them held stays held.
    global _syncers_lock
    _syncers_lock = threading.Lock()
    _syncers.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
