"""The breaker scripts as one Redis Functions library on Redis 7+, EVALSHA elsewhere.

A recorded failure is one script call, and under EVAL every call re-runs the whole
shared prelude (the clock, msgpack, breaker and outcome libraries) and re-parses the
breaker's settings from ARGV. Loaded once with ``FUNCTION LOAD``, the prelude runs at
load time and each call is an ``FCALL`` of a function that only does its work; the
library also keeps the parsed settings by their fingerprint, so a call sends
``''`` for the settings text once Redis has seen it (``lua/lib/breaker.lua``
``breaker_setup``).

Each caller here has the interface of redis-py's ``Script`` (``caller(keys=,
args=)``), so the breaker shells do not know which way a call goes. Per client, the
first call finds out:

* Redis 6.2 answers ``FCALL`` with "unknown command": that client uses EVALSHA from
  then on; so do a fakeredis client (its functions are not what the test suites
  need) and a Redis Cluster client (see :func:`new_mode`), from the start.
* A Redis without the library (first use, a restart without persistence, a
  ``FUNCTION FLUSH``, a failover to a replica that lacks it) answers "Function not
  found": the library is loaded (``FUNCTION LOAD REPLACE``: on a Cluster it goes to
  every primary, and one that has it already must not fail the others) and the call
  is sent again.
* A library that does not know the settings' fingerprint (just loaded, or its cache
  started over) answers ``NOSETTINGS`` before doing anything: the call is sent again
  with the text.

Every retry here is of a call Redis refused before running any of it, so none can
apply a change twice.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import redis.exceptions as rx

from redisbreaker import scripts
from redisbreaker.events import is_cluster
from redisbreaker.options import SETTINGS_TEXT


class _ClientMode:
    """What one client's Redis supports, and which settings it has (per process)."""

    def __init__(self, fcall: bool | None) -> None:
        self.fcall = fcall  # None: not known yet
        self.known: set[str] = set()  # settings fingerprints the library has
        self.lock = threading.Lock()


def _no_fcall(exc: Exception) -> bool:
    text = str(exc).lower()
    return "unknown command" in text and "fcall" in text


def _no_function_permission(exc: Exception) -> bool:
    text = str(exc).lower()
    return isinstance(exc, rx.NoPermissionError) and ("fcall" in text or "function" in text)


def _no_function(exc: Exception) -> bool:
    return "function not found" in str(exc).lower()


def _no_settings(exc: Exception) -> bool:
    return str(exc).startswith("NOSETTINGS")


class _Caller:
    """The shared decisions of the sync and asyncio callers (no I/O)."""

    def __init__(self, client: Any, name: str, mode: _ClientMode) -> None:
        self.client = weakref.proxy(client)  # (shared through scripts.for_client: see there)
        self.name = name
        self.mode = mode
        self.script = scripts.register(client, name)  # the EVAL way
        self.function = scripts.library().functions[name]
        # breaker_flush carries many breakers' heads, each with its settings text.
        self.one_head = name != "breaker_flush"

    def fcall_args(self, keys: list[Any], args: list[Any]) -> list[Any]:
        """FCALL's arguments; the settings text left out when the library has it."""
        fingerprint = args[SETTINGS_TEXT - 1] if self.one_head else None
        if fingerprint in self.mode.known:
            args = [*args[:SETTINGS_TEXT], "", *args[SETTINGS_TEXT + 1 :]]
        return [self.function, len(keys), *keys, *args]

    def answered(self, args: list[Any]) -> None:
        self.mode.fcall = True
        if self.one_head:
            self.mode.known.add(args[SETTINGS_TEXT - 1])

    def refused(self, exc: rx.ResponseError, args: list[Any]) -> str:
        """What to do about FCALL's error: 'eval', 'load', 'again' or 'raise'."""
        if self.mode.fcall is None and (_no_fcall(exc) or _no_function_permission(exc)):
            self.mode.fcall = False  # Redis 6.2, or an ACL that predates FCALL
            return "eval"
        if _no_function(exc):
            return "load"
        if _no_settings(exc):
            self.mode.known.discard(args[SETTINGS_TEXT - 1])
            return "again"
        return "raise"


class FunctionCaller(_Caller):
    """Calls one breaker script on a sync client (``redis.Redis``, ``RedisCluster``)."""

    def __call__(self, keys: list[Any], args: list[Any]) -> Any:
        if self.mode.fcall is False:
            return self.script(keys=keys, args=args)
        for _ in range(4):  # load, then settings: each refusal is met once
            try:
                reply = self.client.fcall(*self.fcall_args(keys, args))
            except rx.ResponseError as exc:
                action = self.refused(exc, args)
                if action == "eval":
                    return self.script(keys=keys, args=args)
                if action == "load":
                    self.client.function_load(scripts.library().code, replace=True)
                elif action == "raise":
                    raise
                continue
            self.answered(args)
            return reply
        raise rx.ResponseError(f"{self.function}: refused again after loading the library")


class AsyncFunctionCaller(_Caller):
    """The asyncio twin of :class:`FunctionCaller`."""

    async def __call__(self, keys: list[Any], args: list[Any]) -> Any:
        if self.mode.fcall is False:
            return await self.script(keys=keys, args=args)
        for _ in range(4):
            try:
                reply = await self.client.fcall(*self.fcall_args(keys, args))
            except rx.ResponseError as exc:
                action = self.refused(exc, args)
                if action == "eval":
                    return await self.script(keys=keys, args=args)
                if action == "load":
                    await self.client.function_load(scripts.library().code, replace=True)
                elif action == "raise":
                    raise
                continue
            self.answered(args)
            return reply
        raise rx.ResponseError(f"{self.function}: refused again after loading the library")


def caller(client: Any, name: str, mode: _ClientMode) -> Any:
    """The caller of breaker script ``name`` on ``client``."""
    module = type(client).__module__
    if module.startswith("redis.asyncio") or (
        module.startswith("fakeredis") and "Async" in type(client).__name__
    ):
        return AsyncFunctionCaller(client, name, mode)
    return FunctionCaller(client, name, mode)


def new_mode(client: Any) -> _ClientMode:
    """How ``client``'s scripts run: fakeredis and Redis Cluster clients always by
    EVALSHA, one server's found out. (redis-py's Cluster client learns FCALL's keys
    from the server, a ``COMMAND GETKEYS`` round trip before every call, and naming the
    node instead turns off its retries, which are how it follows a failover: EVALSHA,
    whose keys it reads itself, is the cheaper call there.)"""
    if type(client).__module__.startswith("fakeredis") or is_cluster(client):
        return _ClientMode(False)
    return _ClientMode(None)
