"""Small helpers shared by the breaker tests."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis


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
    return sum(stats.get(k, {}).get("calls", 0) for k in ("cmdstat_evalsha", "cmdstat_eval"))


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until true or ``timeout``; for events that arrive asynchronously."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()
