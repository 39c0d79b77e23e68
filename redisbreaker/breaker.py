"""The sync ``SharedBreaker``: a thin I/O shell around :mod:`redisbreaker.breaker_core`."""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from collections.abc import Callable
from types import CoroutineType, TracebackType
from typing import Any, ParamSpec, TypeVar, cast

import redis

from redisbreaker import config, forking
from redisbreaker.breaker_base import BreakerBase, decode
from redisbreaker.breaker_core import SENDER_ROUNDS, GateVerdict, ScriptCall, Ticket
from redisbreaker.durability import marker_watch
from redisbreaker.errors import STORAGE_ERRORS, StorageError
from redisbreaker.events import hub_for
from redisbreaker.state import Code, Snapshot, View
from redisbreaker.syncer import syncer_for

P = ParamSpec("P")
R = TypeVar("R")


class SharedBreaker(BreakerBase):
    """A circuit breaker whose state lives in Redis, shared by every process using it.

    Use it as ``breaker.call(fn, ...)``, as a decorator, or as ``with breaker:``.
    Raises :class:`~redisbreaker.CircuitOpenError` when open. See docs/breaker.md for
    every option; all are keyword-only and validated here.
    """

    _tickets: threading.local

    def _new_ticket_store(self) -> threading.local:
        return threading.local()

    def _default_client(self) -> Any:
        return config.default_client()

    def _join_hub(self, client: Any) -> None:
        hub_for(client).add(self._core.channel, self._core.keys.tag, self, decode)
        if self._core.background:
            syncer_for(client).add(self)

    # -- Redis I/O -------------------------------------------------------------------

    def _reply(self, call: ScriptCall) -> Any:
        """Send ``call``; its raw reply, or the library's error."""
        script = self._bind()[call.script]
        try:
            keys = self._core.key_list + call.extra_keys
            reply = script(keys=keys, args=call.args)
            if self._unchecked():  # once per client, when the server has just answered
                self._check_server()
        except STORAGE_ERRORS as exc:
            raise self._storage_error(exc, call.script) from exc
        refusal = self._server_refusal()
        if refusal is not None:
            raise refusal
        return reply

    def _run(self, call: ScriptCall) -> View:
        reply = self._reply(call)
        view, transition = self._core.apply(reply, self._core.now())
        self._notify(transition)
        return view

    def _check_server(self) -> None:
        try:
            info = self._client.info("server")
        except redis.ResponseError:
            info = None  # e.g. an ACL without INFO: the scripts will tell
        self._server_checked(info)
        self._check_marker()

    def _check_marker(self) -> None:
        """Read the prefix's marker (redisbreaker/durability.py): logs at ERROR if Redis
        lost the data set since this process last looked."""
        watch = marker_watch(self._client, self._core.keys.prefix)
        try:
            watch.check(self._client)
        except STORAGE_ERRORS:
            return  # the scripts' own errors say what is wrong
        self._core.data_lost_at_ms = watch.lost_at_ms

    def _exchange(self, call: ScriptCall) -> View:
        """Run ``call``; if it holds the sender role, also send what queued behind it.
        The role is handed back whatever happens."""
        core = self._core
        try:
            view = self._run(call)
        except StorageError as exc:
            core.call_failed(call, exc)
            raise
        except BaseException:
            core.abandoned(call)
            raise
        if call.sender:
            self._send(core.sent())
        return view

    def _send(self, call: ScriptCall | None) -> None:
        core = self._core
        for rounds_left in range(SENDER_ROUNDS - 1, -1, -1):
            if call is None:
                return
            try:
                self._run(call)
            except StorageError as exc:
                core.call_failed(call, exc)
                return
            except BaseException:
                core.abandoned(call)
                raise
            call = core.sent(keep=rounds_left > 0)

    def settle_background(self, call: ScriptCall, reply: Any) -> None:
        """The background syncer's reply to ``call`` (redisbreaker/syncer.py): taken in,
        and what queued behind it sent."""
        follow = self._settle(call, reply)
        if follow is not None:
            self._send(follow)

    # -- one call ------------------------------------------------------------------

    def _admit(self) -> Ticket:
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
            view = self._exchange(call)
        except StorageError:
            return core.outage_admit(core.now())
        return core.admit_result(view, call, now)

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn(*args, **kwargs)`` through the breaker."""
        core = self._core
        now = core.now
        start = now()
        # The hot path: core.fast_admit's first case, inline (a closed, fresh view).
        ticket = core.allow_ticket
        if ticket is None or start >= core.view_expires or self._epoch != forking.epoch:
            ticket = self._admit()
            start = now()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._send(core.finish(ticket, exc, now() - start))
            raise
        if type(result) is CoroutineType:  # (a type check: the hot path stays cheap)
            # An async function: nothing ran but the coroutine's creation. Count
            # nothing (a trial permit is handed back) and say which class to use.
            cast("CoroutineType[Any, Any, Any]", result).close()
            self._send(core.finish_code(ticket, Code.IGNORED))
            raise TypeError(
                f"{fn!r} returned a coroutine: await it through "
                "redisbreaker.aio.SharedBreaker (this breaker is for sync functions)"
            )
        follow = core.success(ticket, now() - start)
        if follow is not None:
            self._send(follow)
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
        stack.append((ticket, self._core.now()))
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        ticket, start = self._tickets.stack.pop()
        self._send(self._core.finish(ticket, exc, self._core.now() - start))

    # -- shared state ---------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The shared state now (one round trip). Raises StorageError if Redis is down."""
        view = self._exchange(self._core.snapshot_call())
        self._check_marker()
        return self._core.snapshot(view)

    def sync(self) -> Snapshot:
        """Send this process's pending outcomes and refresh the cached view now.

        Never takes a half-open permit: only an admitted call does."""
        return self._core.snapshot(self._exchange(self._core.flush_call()))

    def force_open(self, *, reason: str | None = None) -> Snapshot:
        """Open the breaker cluster-wide until :meth:`reset` (calls are refused)."""
        return self._core.snapshot(
            self._exchange(self._core.operate_call("force_open", reason=reason))
        )

    def open(self, seconds: float, *, reason: str | None = None) -> Snapshot:
        """Open the breaker cluster-wide for ``seconds``; then it goes half-open as usual."""
        return self._core.snapshot(
            self._exchange(self._core.operate_call("open", seconds, reason=reason))
        )

    def disable(self, *, reason: str | None = None) -> Snapshot:
        """Let every call through cluster-wide and record nothing, until :meth:`reset`."""
        return self._core.snapshot(
            self._exchange(self._core.operate_call("disable", reason=reason))
        )

    def claim_gate(self, worker_id: str, lease_ms: int, mode: str) -> GateVerdict:
        """For the Celery consumption gate: may paused worker ``worker_id`` consume
        again? One script call; raises StorageError. See ``lua/gate_claim.lua``."""
        return GateVerdict.parse(self._reply(self._core.gate_claim_call(worker_id, lease_ms, mode)))

    def reset(self, *, reason: str | None = None) -> Snapshot:
        """Close the breaker cluster-wide and clear its counts."""
        return self._core.snapshot(self._exchange(self._core.operate_call("reset", reason=reason)))
