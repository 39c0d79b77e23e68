"""The sync ``SharedBreaker``: a thin I/O shell around :mod:`redisbreaker.core`."""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from redisbreaker import config, scripts
from redisbreaker._base import STORAGE_ERRORS, BreakerBase, decode
from redisbreaker.core import ScriptCall, Ticket, monotonic
from redisbreaker.errors import StorageError
from redisbreaker.events import hub_for
from redisbreaker.state import Snapshot, View

P = ParamSpec("P")
R = TypeVar("R")

_SCRIPTS = ("breaker_admit", "breaker_record", "breaker_operate", "breaker_snapshot")


class SharedBreaker(BreakerBase):
    """A circuit breaker whose state lives in Redis, shared by every process using it.

    Use it as ``breaker.call(fn, ...)``, as a decorator, or as ``with breaker:``.
    Raises :class:`~redisbreaker.CircuitOpenError` when open. See the README for
    every option; all are keyword-only and validated here.
    """

    _scripts: dict[str, Any] | None = None
    _tickets: threading.local

    def _bind(self) -> dict[str, Any]:
        # Resolved on first use, not at construction: breakers are often made at import
        # time, before configure() runs, and construction must never touch Redis.
        if self._scripts is None:
            client = self._client if self._client is not None else config.default_client()
            self._client = client
            self._scripts = {name: scripts.register(client, name) for name in _SCRIPTS}
            self._tickets = threading.local()
            hub_for(client).add(self._core.channel, self._core.keys.tag, self, decode)
        return self._scripts

    def _run(self, call: ScriptCall) -> View:
        script = self._bind()[call.script]
        try:
            reply = script(keys=self._core.key_list, args=call.args)
        except STORAGE_ERRORS as exc:
            raise self._storage_error(exc) from exc
        view, transition = self._core.apply(reply, monotonic())
        self._notify(transition)
        return view

    # -- one call ------------------------------------------------------------------

    def _admit(self) -> Ticket:
        core = self._core
        now = monotonic()
        ticket = core.fast_admit(now)
        if ticket is not None:
            return ticket
        call = core.sync_call()
        try:
            view = self._run(call)
        except StorageError as exc:
            core.storage_failed(exc, now)
            return core.outage_admit(now)
        return core.admit_result(view, call, now)

    def _settle(self, ticket: Ticket, exc: BaseException | None, duration: float) -> None:
        core = self._core
        call = core.finish(ticket, exc, duration)
        if call is not None:
            try:
                self._run(call)
            except StorageError as err:
                core.record_failed(call, err, monotonic())

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn(*args, **kwargs)`` through the breaker."""
        ticket = self._admit()
        start = monotonic()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._settle(ticket, exc, monotonic() - start)
            raise
        self._settle(ticket, None, monotonic() - start)
        return result

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorate ``fn`` so every call goes through the breaker."""
        if inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"{fn!r} is a coroutine function: use redisbreaker.aio.SharedBreaker for it"
            )

        @functools.wraps(fn)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            return self.call(fn, *args, **kwargs)

        return guarded

    def __enter__(self) -> SharedBreaker:
        ticket = self._admit()
        stack = getattr(self._tickets, "stack", None)
        if stack is None:
            stack = self._tickets.stack = []
        stack.append((ticket, monotonic()))
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        ticket, start = self._tickets.stack.pop()
        self._settle(ticket, exc, monotonic() - start)

    # -- shared state ---------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The shared state now (one round trip). Raises StorageError if Redis is down."""
        return self._core.snapshot(self._run(self._core.snapshot_call()))

    def sync(self) -> Snapshot:
        """Flush locally counted successes and refresh the cached view now."""
        return self._core.snapshot(self._run(self._core.sync_call()))

    def force_open(self) -> Snapshot:
        """Open the breaker cluster-wide until :meth:`reset` (calls are refused)."""
        return self._core.snapshot(self._run(self._core.operate_call("force_open")))

    def open(self, seconds: float) -> Snapshot:
        """Open the breaker cluster-wide for ``seconds``; then it goes half-open as usual."""
        return self._core.snapshot(self._run(self._core.operate_call("open", seconds)))

    def disable(self) -> Snapshot:
        """Let every call through cluster-wide and record nothing, until :meth:`reset`."""
        return self._core.snapshot(self._run(self._core.operate_call("disable")))

    def reset(self) -> Snapshot:
        """Close the breaker cluster-wide and clear its counts."""
        return self._core.snapshot(self._run(self._core.operate_call("reset")))
