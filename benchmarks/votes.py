"""Suite 6: transaction votes: decision latency to every waiter, and votes per second.

* **Decision latency**: N participants; N-1 of them (threads spread over up to 4
  processes, one client per process) ``vote_and_wait`` yes; when the tally shows
  N-1 yes votes the parent casts the deciding vote, noting the monotonic time just
  before sending it; each waiter notes when its ``vote_and_wait`` returned.
  Reported: p50/p99 over all waiters, and the time to the last waiter per run.
* **Votes per second**: 4 processes vote distinct participants of one transaction
  as fast as one client each can, on one Redis.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis

from benchmarks.harness import Config, SuiteResult, check, fmt, mp_context, summarize
from redisbreaker.transaction import Transaction

PROCESSES = 4


def _waiters(url: str, tx_id: str, ids: list[int], out: Any) -> None:
    client = redis.Redis.from_url(url, max_connections=len(ids) + 8)
    times: list[float] = []
    lock = threading.Lock()

    def wait_one(i: int) -> None:
        decision = Transaction(tx_id, client=client).vote_and_wait(i, True, timeout=60)
        t = time.monotonic()
        with lock:
            times.append(t if decision.committed else float("nan"))

    threads = [threading.Thread(target=wait_one, args=(i,), daemon=True) for i in ids]
    for th in threads:
        th.start()
    for th in threads:
        th.join(90)
    out.put(times)


def decision_latency(cfg: Config, n: int) -> dict[str, Any]:
    ctx = mp_context()
    url = cfg.url
    client = redis.Redis.from_url(url)
    tx = Transaction.begin(n, timeout=120, client=client)
    waiting = list(range(n - 1))
    w = min(PROCESSES, max(1, len(waiting)))
    chunks = [waiting[i::w] for i in range(w)]
    out = ctx.Queue()
    procs = [ctx.Process(target=_waiters, args=(url, tx.id, c, out), daemon=True)
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


def run(cfg: Config) -> SuiteResult:
    ns = cfg.pick([10, 100, 1000], [10])
    reps = cfg.pick({10: 10, 100: 10, 1000: 4}, {10: 1})
    data: dict[str, Any] = {}
    for n in ns:
        lats: list[float] = []
        lasts: list[float] = []
        for _ in range(reps[n]):
            one = decision_latency(cfg, n)
            lats += one["latencies_ms"]
            if one["last_ms"] is not None:
                lasts.append(one["last_ms"])
        data[f"N={n}"] = {"n": n, "runs": reps[n], "waiters_ms": summarize(lats),
                          "last_waiter_ms": summarize(lasts)}  # fmt: skip
    vps = votes_per_second(cfg, cfg.pick(2000, 50))
    data["votes_per_second"] = vps
    result = SuiteResult(
        suite="votes",
        title="Votes: deciding vote to every waiter (ms); votes per second on one Redis",
        columns=["N", "runs", "waiter p50 ms", "waiter p99 ms", "last waiter p50 ms",
                 "last waiter p99 ms"],
    )  # fmt: skip
    for n in ns:
        d = data[f"N={n}"]
        wt, last = d["waiters_ms"], d["last_waiter_ms"]
        result.rows.append([n, d["runs"], fmt(wt["p50"]), fmt(wt["p99"]), fmt(last["p50"]),
                            fmt(last["p99"])])  # fmt: skip
    result.rows.append([f"votes/s ({PROCESSES} processes)", fmt(vps, 0), "", "", "", ""])
    key = "N=100" if "N=100" in data else f"N={ns[-1]}"
    result.targets = [
        check(f"deciding vote to the last of {data[key]['n']} waiters, p99", "<= 10 ms",
              data[key]["last_waiter_ms"]["p99"], lambda v: v <= 10.0),
    ]  # fmt: skip
    result.notes = [
        f"Waiters are threads in up to {PROCESSES} processes (one client each); times are "
        "CLOCK_MONOTONIC, system-wide on Linux.",
    ]
    result.data = data
    result.chart = {
        "labels": [f"N={n}" for n in ns],
        "series": {
            "waiter p50": [data[f"N={n}"]["waiters_ms"]["p50"] for n in ns],
            "last waiter p99": [data[f"N={n}"]["last_waiter_ms"]["p99"] for n in ns],
        },
        "ylabel": "ms after the deciding vote",
        "log": False,
    }
    return result
