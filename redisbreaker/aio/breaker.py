"""The asyncio ``SharedBreaker``: the same core as the sync one, with ``await``."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

import redis

from redisbreaker import config, forking
from redisbreaker.breaker_base import BreakerBase, decode
from redisbreaker.breaker_core import SENDER_ROUNDS, ScriptCall, Ticket
from redisbreaker.durability import marker_watch
from redisbreaker.errors import STORAGE_ERRORS, StorageError
from redisbreaker.events import async_hub_for
from redisbreaker.state import Code, Snapshot, View
from redisbreaker.syncer import async_syncer_for

P = ParamSpec("P")
R = TypeVar("R")


class SharedBreaker(BreakerBase):
    """The asyncio twin of :class:`redisbreaker.SharedBreaker`.

    Takes a ``redis.asyncio`` client (``client=``) or builds one from the configured
    URL. ``await breaker.call(coro_fn, ...)``, ``@breaker`` on a coroutine function,
    or ``async with breaker:``. Same options, same signature.
    """

    _tickets: contextvars.ContextVar[tuple[tuple[Ticket, float], ...]]

    def _new_ticket_store(self) -> contextvars.ContextVar[tuple[tuple[Ticket, float], ...]]:
        return contextvars.ContextVar(f"redisbreaker-{id(self)}", default=())

    def _default_client(self) -> Any:
        return config.default_async_client()

    def _join_hub(self, client: Any) -> None:
        async_hub_for(client).add(self._core.channel, self._core.keys.tag, self, decode)
        if self._core.background:
            async_syncer_for(client).add(self)

    # -- Redis I/O (the sync shell's loops, with await) ---------------------------------

    async def _run(self, call: ScriptCall) -> View:
        script = self._bind()[call.script]
        try:
            keys = self._core.key_list + call.extra_keys
            reply = await script(keys=keys, args=call.args)
            if self._unchecked():  # once per client, when the server has just answered
                await self._check_server()
        except STORAGE_ERRORS as exc:
            raise self._storage_error(exc, call.script) from exc
        refusal = self._server_refusal()
        if refusal is not None:
            raise refusal
        view, transition = self._core.apply(reply, self._core.now())
        self._notify(transition)
        return view

    async def _check_server(self) -> None:
        try:
            info = await self._client.info("server")
        except redis.ResponseError:
            info = None
        self._server_checked(info)
        await self._check_marker()

    async def _check_marker(self) -> None:
        """Read the prefix's marker (redisbreaker/durability.py): logs at ERROR if Redis
        lost the data set since this process last looked."""
        watch = marker_watch(self._client, self._core.keys.prefix)
        try:
            await watch.acheck(self._client)
        except STORAGE_ERRORS:
            return  # the scripts' own errors say what is wrong
        self._core.data_lost_at_ms = watch.lost_at_ms

    async def _exchange(self, call: ScriptCall) -> View:
        core = self._core
        try:
            view = await self._run(call)
        except StorageError as exc:
            core.call_failed(call, exc)
            raise
        except BaseException:
            core.abandoned(call)
            raise
        if call.sender:
            await self._send(core.sent())
        return view

    async def _send(self, call: ScriptCall | None) -> None:
        core = self._core
        for rounds_left in range(SENDER_ROUNDS - 1, -1, -1):
            if call is None:
                return
            try:
                await self._run(call)
            except StorageError as exc:
                core.call_failed(call, exc)
                return
            except BaseException:
                core.abandoned(call)
                raise
            call = core.sent(keep=rounds_left > 0)

    async def _admit(self) -> Ticket:
        if self._epoch != forking.epoch:
            # First use, or first use in a forked child: join its hub now. (If the client
            # cannot be made, the admit call below meets the same outage, and its policy.)
            with contextlib.suppress(StorageError):
                self._bind()
        core = self._core
        now = core.now()
        ticket = core.fast_admit(now)
        if ticket is not None:
            return ticket
        call = core.admit_call()
        try:
            view = await self._exchange(call)
        except StorageError:
            return core.outage_admit(core.now())
        return core.admit_result(view, call, now)

    async def settle_background(self, call: ScriptCall, reply: Any) -> None:
        """The background syncer's reply to ``call`` (redisbreaker/syncer.py): taken in,
        and what queued behind it sent."""
        follow = self._settle(call, reply)
        if follow is not None:
            await self._send(follow)

    # -- one call ------------------------------------------------------------------

    async def call(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await ``fn(*args, **kwargs)`` through the breaker."""
        ticket = await self._admit()
        now = self._core.now
        start = now()
        try:
            awaitable = fn(*args, **kwargs)
            if not inspect.isawaitable(awaitable):
                raise _NotAwaitable(fn, awaitable)
            result = await awaitable
        except _NotAwaitable as misuse:
            # A sync function: it ran, but its result says nothing the breaker should
            # count as the outcome of an awaited call. Count nothing; name the class.
            await self._send(self._core.finish_code(ticket, Code.IGNORED))
            raise TypeError(str(misuse)) from None
        except BaseException as exc:
            await self._send(self._core.finish(ticket, exc, now() - start))
            raise
        await self._send(self._core.finish(ticket, None, now() - start))
        return result

    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        """Decorate a coroutine function so every call goes through the breaker."""
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"{fn!r} is not a coroutine function: use redisbreaker.SharedBreaker for it"
            )

        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            return await self.call(fn, *args, **kwargs)

        return guarded

    async def __aenter__(self) -> SharedBreaker:
        ticket = await self._admit()
        self._tickets.set((*self._tickets.get(), (ticket, self._core.now())))
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        *rest, (ticket, start) = self._tickets.get()
        self._tickets.set(tuple(rest))
        await self._send(self._core.finish(ticket, exc, self._core.now() - start))

    # -- shared state ---------------------------------------------------------------

    async def snapshot(self) -> Snapshot:
        """The shared state now (one round trip). Raises StorageError if Redis is down."""
        view = await self._exchange(self._core.snapshot_call())
        await self._check_marker()
        return self._core.snapshot(view)

    async def sync(self) -> Snapshot:
        """Send this process's pending outcomes and refresh the cached view now.

        Never takes a half-open permit: only an admitted call does."""
        return self._core.snapshot(await self._exchange(self._core.flush_call()))

    async def force_open(self, *, reason: str | None = None) -> Snapshot:
        """Open the breaker cluster-wide until :meth:`reset`."""
        return self._core.snapshot(
            await self._exchange(self._core.operate_call("force_open", reason=reason))
        )

    async def open(self, seconds: float, *, reason: str | None = None) -> Snapshot:
        """Open the breaker cluster-wide for ``seconds``; then it goes half-open as usual."""
        return self._core.snapshot(
            await self._exchange(self._core.operate_call("open", seconds, reason=reason))
        )

    async def disable(self, *, reason: str | None = None) -> Snapshot:
        """Let every call through cluster-wide and record nothing, until :meth:`reset`."""
        return self._core.snapshot(
            await self._exchange(self._core.operate_call("disable", reason=reason))
        )

    async def reset(self, *, reason: str | None = None) -> Snapshot:
        """Close the breaker cluster-wide and clear its counts."""
        return self._core.snapshot(
            await self._exchange(self._core.operate_call("reset", reason=reason))
        )


class _NotAwaitable(Exception):
    def __init__(self, fn: object, result: object) -> None:
        super().__init__(
            f"{fn!r} returned {type(result).__name__}, not an awaitable: use "
            "redisbreaker.SharedBreaker for sync functions (this breaker awaits)"
        )
