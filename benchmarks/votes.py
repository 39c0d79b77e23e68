"""Suite 6: transaction votes: decision latency to every waiter, and votes per second.

* **Decision latency**: N participants; N-1 of them (threads spread over up to 4
  processes, one client per process) ``vote_and_wait`` yes; when the tally shows
  N-1 yes votes the parent casts the deciding vote, noting the monotonic time just
  before sending it; each waiter notes when its ``vote_and_wait`` returned.
  Reported: p50/p99 over all waiters, and the time to the last waiter per run. The
  threads end once they have noted their time (the targets are checked on this case);
  in the *parked* case they wait instead, as a pool's threads go back for their next
  task, so thread teardown is not in the numbers.
* **Bare threads** (the anchor, no Redis): the same processes and threads, each
  thread waiting on a ``threading.Event`` of its own; when the parent signals, one
  thread per process sets them all at once (what the hub did until issue 13), or sets
  the first two and each woken thread sets the next (the relay the hub now uses). The
  time from the signal to the last thread is what threads alone cost on this machine,
  in the same run: the floor under the library's number.
* **Votes per second**: 4 processes vote distinct participants of one transaction
  as fast as one client each can, on one Redis.

The latency cases run interleaved (each round in a fresh random order).
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import redis

from benchmarks.harness import Config, SuiteResult, Target, check, fmt, mp_context, summarize
from redisbreaker.transaction import Transaction
from redisbreaker.tx_waiters import RELAY_DEPTH

PROCESSES = 4


def _waiters(url: str, tx_id: str, ids: list[int], out: Any, park: bool) -> None:
    client = redis.Redis.from_url(url, max_connections=len(ids) + 8)
    times: list[float] = []
    lock = threading.Lock()
    all_back, release = threading.Event(), threading.Event()

    def wait_one(i: int) -> None:
        decision = Transaction(tx_id, client=client).vote_and_wait(i, True, timeout=60)
        t = time.monotonic()
        with lock:
            times.append(t if decision.committed else float("nan"))
            if len(times) == len(ids):
                all_back.set()
        if park:  # as a pool's thread goes back for its next task, instead of ending
            release.wait(120)

    threads = [threading.Thread(target=wait_one, args=(i,), daemon=True) for i in ids]
    for th in threads:
        th.start()
    if park:
        all_back.wait(90)
        release.set()
    for th in threads:
        th.join(90)
    out.put(times)


def decision_latency(cfg: Config, n: int, *, park: bool = False) -> dict[str, Any]:
    ctx = mp_context()
    url = cfg.url
    client = redis.Redis.from_url(url)
    tx = Transaction.begin(n, timeout=120, client=client)
    waiting = list(range(n - 1))
    w = min(PROCESSES, max(1, len(waiting)))
    chunks = [waiting[i::w] for i in range(w)]
    out = ctx.Queue()
    procs = [ctx.Process(target=_waiters, args=(url, tx.id, c, out, park), daemon=True)
             for c in chunks if c]  # fmt: skip
    for p in procs:
        p.start()
    deadline = time.monotonic() + 120
    while tx.tally().yes < n - 1:
        if time.monotonic() > deadline:
            raise TimeoutError("waiters did not all vote")
        time.sleep(0.005)
    time.sleep(0.02)  # the last voters are back in their wait
    t0 = time.monotonic()
    tx.vote(n - 1, True)
    lat: list[float] = []
    for _ in procs:
        lat += [(t - t0) * 1000.0 for t in out.get(timeout=120)]
    for p in procs:
        p.join(10)
    return {"latencies_ms": lat, "last_ms": max(lat) if lat else None}


def _bare_waiters(count: int, relayed: bool, ready: Any, go: Any, out: Any) -> None:
    events = [threading.Event() for _ in range(count + RELAY_DEPTH)]
    times: list[float] = []
    lock = threading.Lock()

    def wait_one(i: int) -> None:
        events[i].wait(60)
        if relayed:
            events[i + RELAY_DEPTH].set()
        t = time.monotonic()
        with lock:
            times.append(t)

    threads = [threading.Thread(target=wait_one, args=(i,), daemon=True) for i in range(count)]
    for th in threads:
        th.start()
    ready.wait(60)
    go.wait(60)  # this thread stands for the hub's: it wakes the waiters
    for event in events[:RELAY_DEPTH] if relayed else events[:count]:
        event.set()
    for th in threads:
        th.join(90)
    out.put(times)


def bare_latency(n: int, relayed: bool) -> dict[str, Any]:
    """:func:`decision_latency`'s processes and threads with no Redis and no library."""
    ctx = mp_context()
    w = min(PROCESSES, max(1, n - 1))
    counts = [len(range(i, n - 1, w)) for i in range(w)]
    ready, go, out = ctx.Barrier(w + 1), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_bare_waiters, args=(c, relayed, ready, go, out), daemon=True)
             for c in counts if c]  # fmt: skip
    for p in procs:
        p.start()
    ready.wait(60)
    time.sleep(0.02)  # the threads are in their wait
    t0 = time.monotonic()
    go.set()
    lat: list[float] = []
    for _ in procs:
        lat += [(t - t0) * 1000.0 for t in out.get(timeout=120)]
    for p in procs:
        p.join(10)
    return {"latencies_ms": lat, "last_ms": max(lat) if lat else None}


CASES = {
    "redisbreaker": lambda cfg, n: decision_latency(cfg, n),
    "redisbreaker, threads parked after": lambda cfg, n: decision_latency(cfg, n, park=True),
    "bare threads, all set at once": lambda cfg, n: bare_latency(n, relayed=False),
    "bare threads, relayed": lambda cfg, n: bare_latency(n, relayed=True),
}


def votes_per_second(cfg: Config, per_process: int) -> float:
    ctx = mp_context()
    total = PROCESSES * per_process
    client = redis.Redis.from_url(cfg.url)
    tx = Transaction.begin(total, timeout=300, client=client)
    barrier = ctx.Barrier(PROCESSES + 1)
    procs = [ctx.Process(target=_voter, args=(cfg.url, tx.id, range(i, total, PROCESSES),
                                               barrier), daemon=True)
             for i in range(PROCESSES)]  # fmt: skip
    for p in procs:
        p.start()
    barrier.wait(60)
    t0 = time.monotonic()
    barrier.wait(300)
    elapsed = time.monotonic() - t0
    for p in procs:
        p.join(10)
    return total / elapsed


def _voter(url: str, tx_id: str, ids: range, barrier: Any) -> None:
    tx = Transaction(tx_id, client=redis.Redis.from_url(url))
    tx.status()  # scripts loaded before the clock starts
    barrier.wait()
    for i in ids:
        tx.vote(i, True)
    barrier.wait()


def _target(data: dict[str, Any], n: int, limit: float) -> Target:
    return check(f"deciding vote to the last of {n} waiters, p99", f"<= {limit:g} ms",
                 data[f"N={n}"]["last_waiter_ms"]["p99"], lambda v: v <= limit)  # fmt: skip


def run(cfg: Config) -> SuiteResult:
    ns = cfg.pick([10, 100, 1000], [10])
    reps = cfg.pick({10: 10, 100: 10, 1000: 4}, {10: 1})
    by_case: dict[str, dict[str, Any]] = {case: {} for case in CASES}
    for n in ns:
        lats: dict[str, list[float]] = {case: [] for case in CASES}
        lasts: dict[str, list[float]] = {case: [] for case in CASES}
        for _ in range(reps[n]):
            for case in random.sample(list(CASES), len(CASES)):
                one = CASES[case](cfg, n)
                lats[case] += one["latencies_ms"]
                if one["last_ms"] is not None:
                    lasts[case].append(one["last_ms"])
        for case in CASES:
            by_case[case][f"N={n}"] = {"n": n, "runs": reps[n], "waiters_ms": summarize(lats[case]),
                                       "last_waiter_ms": summarize(lasts[case])}  # fmt: skip
    # The library's case stays where earlier results have it; the others beside it.
    data: dict[str, Any] = dict(by_case.pop("redisbreaker"))
    data["other_cases"] = by_case
    vps = votes_per_second(cfg, cfg.pick(2000, 50))
    data["votes_per_second"] = vps
    result = SuiteResult(
        suite="votes",
        title="Votes: deciding vote to every waiter (ms); votes per second on one Redis",
        columns=["N", "case", "runs", "waiter p50 ms", "waiter p99 ms", "last waiter p50 ms",
                 "last waiter p99 ms", "last p50 / bare relayed"],
    )  # fmt: skip
    relayed = by_case["bare threads, relayed"]
    for n in ns:
        floor = relayed[f"N={n}"]["last_waiter_ms"]["p50"]
        for case in CASES:
            d = data[f"N={n}"] if case == "redisbreaker" else by_case[case][f"N={n}"]
            wt, last = d["waiters_ms"], d["last_waiter_ms"]
            like = "parked" not in case  # the bare threads end as these do
            ratio = last["p50"] / floor if like and last["p50"] is not None and floor else None
            result.rows.append([n, case, d["runs"], fmt(wt["p50"]), fmt(wt["p99"]),
                                fmt(last["p50"]), fmt(last["p99"]), fmt(ratio)])  # fmt: skip
    result.rows.append([f"votes/s ({PROCESSES} processes)", fmt(vps, 0), "", "", "", "", "", ""])
    # Issue 13's targets, on the first case; a tiny run checks its N against 10 ms.
    limits = {100: 10.0, 1000: 40.0}
    measured = [n for n in limits if n in ns] or [ns[-1]]
    result.targets = [_target(data, n, limits.get(n, 10.0)) for n in measured]
    result.notes = [
        f"Waiters are threads in up to {PROCESSES} processes (one client each); times are "
        "CLOCK_MONOTONIC, system-wide on Linux. Each thread ends once it has noted its "
        "time; 'parked': it waits instead, as a pool's thread would.",
        "bare threads: the same processes and threads, no Redis, no library: one "
        "threading.Event per thread, set all at once or relayed (each woken thread sets "
        f"the one {RELAY_DEPTH} ahead). All cases run interleaved.",
    ]
    result.data = data
    result.chart = {
        "labels": [f"N={n}" for n in ns],
        "series": {
            "waiter p50": [data[f"N={n}"]["waiters_ms"]["p50"] for n in ns],
            "last waiter p99": [data[f"N={n}"]["last_waiter_ms"]["p99"] for n in ns],
            "bare threads, relayed: last p99": [
                relayed[f"N={n}"]["last_waiter_ms"]["p99"] for n in ns
            ],
        },
        "ylabel": "ms after the deciding vote",
        "log": False,
    }
    return result
