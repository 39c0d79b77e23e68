"""Small helpers shared by the breaker tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, TypeVar

import pytest
import redis

from redisbreaker import SharedBreaker
from redisbreaker.events import hub_for
from redisbreaker.state import Transition
from redisbreaker.testing.servers import ServerStartError


class _Startable(Protocol):
    def start(self) -> object: ...


S = TypeVar("S", bound=_Startable)


def started(server: S, what: str = "redis-server") -> S:
    """``server`` started; the test fails (never skips) when it cannot be."""
    try:
        server.start()
    except ServerStartError as exc:
        pytest.fail(f"could not start {what} for the tests: {exc}", pytrace=False)
    return server


def healed(setup: S, what: str) -> S:
    """A shared Sentinel or Cluster setup with every node up again (a killed master
    back as a replica) and its data set empty; the test fails if it cannot be."""
    try:
        setup.heal()  # type: ignore[attr-defined]
    except ServerStartError as exc:
        pytest.fail(f"could not heal the {what}: {exc}", pytrace=False)
    setup.flushall()  # type: ignore[attr-defined]
    return setup


class Boom(Exception):
    """The failure our guarded functions raise."""


def ok() -> str:
    return "ok"


def boom() -> None:
    raise Boom("downstream is down")


def fail_n(breaker_call: Callable[..., object], n: int) -> None:
    for _ in range(n):
        try:
            breaker_call(boom)
        except Boom:
            pass


def round_trips(client: redis.Redis) -> int:
    """Commands the server has run, from INFO commandstats (not counting INFO itself)."""
    stats = client.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k not in ("cmdstat_info",))


def script_calls(client: redis.Redis) -> int:
    """EVALSHA/EVAL calls the server has run: one per breaker round trip."""
    stats = client.info("commandstats")
    return sum(
        stats.get(k, {}).get("calls", 0)
        for k in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_fcall")
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until true or ``timeout``; for events that arrive asynchronously."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def settle_hub(r: redis.Redis) -> SharedBreaker:
    """Ready ``r`` for counting round trips: every breaker script loaded in Redis (no
    NOSCRIPT reload to count), and the pub/sub hub's subscription confirmed and handled.

    A confirmed subscription drops every cached view on the hub (events may have been
    missed before it). The positive signal that this is over: an event published after
    the confirmation has arrived (the hub handles messages in order). Keep the returned
    probe alive: the hub holds its listeners weakly.
    """
    seen: list[Transition] = []
    probe = SharedBreaker("hub-probe", client=r, fail_max=1, reset_timeout=30)
    probe.subscribe(seen.append)
    probe.call(ok)  # binds (joins the hub); loads the admit script
    probe.sync()  # loads the report script
    probe.snapshot()  # loads the snapshot script
    assert wait_for(lambda: hub_for(r).connected.is_set())
    probe.force_open()  # loads the operate script; publishes an event
    assert wait_for(lambda: len(seen) == 1)
    return probe
