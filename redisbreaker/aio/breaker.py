"""The asyncio ``SharedBreaker``: the same core as the sync one, with ``await``."""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from redisbreaker import config, scripts
from redisbreaker._base import STORAGE_ERRORS, BreakerBase, decode
from redisbreaker.core import ScriptCall, Ticket, monotonic
from redisbreaker.errors import StorageError
from redisbreaker.events import async_hub_for
from redisbreaker.state import Snapshot, View

P = ParamSpec("P")
R = TypeVar("R")

_SCRIPTS = ("breaker_admit", "breaker_record", "breaker_operate", "breaker_snapshot")


class SharedBreaker(BreakerBase):
    """The asyncio twin of :class:`redisbreaker.SharedBreaker`.

    Takes a ``redis.asyncio`` client (``client=``) or builds one from the configured
    URL. ``await breaker.call(coro_fn, ...)``, ``@breaker`` on a coroutine function,
    or ``async with breaker:``.
    """

    _scripts: dict[str, Any] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tickets: contextvars.ContextVar[tuple[tuple[Ticket, float], ...]] = (
            contextvars.ContextVar(f"redisbreaker-{id(self)}", default=())
        )

    def _bind(self) -> dict[str, Any]:
        if self._scripts is None:
            client = self._client if self._client is not None else config.default_async_client()
            self._client = client
            self._scripts = {name: scripts.register(client, name) for name in _SCRIPTS}
            async_hub_for(client).add(self._core.channel, self._core.keys.tag, self, decode)
        return self._scripts

    async def _run(self, call: ScriptCall) -> View:
        script = self._bind()[call.script]
        try:
            reply = await script(keys=self._core.key_list, args=call.args)
        except STORAGE_ERRORS as exc:
            raise self._storage_error(exc) from exc
        view, transition = self._core.apply(reply, monotonic())
        self._notify(transition)
        return view

    async def _admit(self) -> Ticket:
        core = self._core
        now = monotonic()
        ticket = core.fast_admit(now)
        if ticket is not None:
            return ticket
        call = core.sync_call()
        try:
            view = await self._run(call)
        except StorageError as exc:
            core.storage_failed(exc, now)
            return core.outage_admit(now)
        return core.admit_result(view, call, now)

    async def _settle(self, ticket: Ticket, exc: BaseException | None, duration: float) -> None:
        core = self._core
        call = core.finish(ticket, exc, duration)
        if call is not None:
            try:
                await self._run(call)
            except StorageError as err:
                core.record_failed(call, err, monotonic())

    async def call(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await ``fn(*args, **kwargs)`` through the breaker."""
        ticket = await self._admit()
        start = monotonic()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            await self._settle(ticket, exc, monotonic() - start)
            raise
        await self._settle(ticket, None, monotonic() - start)
        return result

    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        """Decorate a coroutine function so every call goes through the breaker."""

        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            return await self.call(fn, *args, **kwargs)

        return guarded

    async def __aenter__(self) -> SharedBreaker:
        ticket = await self._admit()
        self._tickets.set((*self._tickets.get(), (ticket, monotonic())))
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        *rest, (ticket, start) = self._tickets.get()
        self._tickets.set(tuple(rest))
        await self._settle(ticket, exc, monotonic() - start)

    async def snapshot(self) -> Snapshot:
        """The shared state now (one round trip). Raises StorageError if Redis is down."""
        return self._core.snapshot(await self._run(self._core.snapshot_call()))

    async def sync(self) -> Snapshot:
        """Flush locally counted successes and refresh the cached view now."""
        return self._core.snapshot(await self._run(self._core.sync_call()))

    async def force_open(self) -> Snapshot:
        """Open the breaker cluster-wide until :meth:`reset`."""
        return self._core.snapshot(await self._run(self._core.operate_call("force_open")))

    async def open(self, seconds: float) -> Snapshot:
        """Open the breaker cluster-wide for ``seconds``; then it goes half-open as usual."""
        return self._core.snapshot(await self._run(self._core.operate_call("open", seconds)))

    async def disable(self) -> Snapshot:
        """Let every call through cluster-wide and record nothing, until :meth:`reset`."""
        return self._core.snapshot(await self._run(self._core.operate_call("disable")))

    async def reset(self) -> Snapshot:
        """Close the breaker cluster-wide and clear its counts."""
        return self._core.snapshot(await self._run(self._core.operate_call("reset")))
