"""Suite 3: a breaker opened in one process; how long until each of K others sees it.

K processes each hold the breaker (their own client, pub/sub hub running, view
cached). The parent opens it (``breaker.open()``) and notes the monotonic time just
before sending; each process notes when its cached view turned open (the moment its
``subscribe`` callback runs, right after the view is updated). CLOCK_MONOTONIC is
system-wide on Linux, so the times compare across processes of one host.
"""

from __future__ import annotations

import queue
import time
import uuid
from typing import Any

import redis

from benchmarks.harness import Config, SuiteResult, check, fmt, mp_context, summarize
from redisbreaker import SharedBreaker, State, Transition
from redisbreaker.events import hub_for


def _watcher(url: str, name: str, out: Any, stop: Any) -> None:
    client = redis.Redis.from_url(url)
    breaker = SharedBreaker(name, client=client, fail_max=5, reset_timeout=60)

    def seen(t: Transition) -> None:
        if t.new is State.OPEN:
            out.put(("open", t.generation, time.monotonic()))

    breaker.subscribe(seen)
    breaker.sync()
    hub_for(client).connected.wait(10)
    out.put(("ready", 0, 0.0))
    stop.wait(300)


def measure_k(cfg: Config, k: int, incidents: int) -> dict[str, Any]:
    ctx = mp_context()
    name = f"bench-prop-{uuid.uuid4().hex[:8]}"
    out, stop = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_watcher, args=(cfg.url, name, out, stop), daemon=True)
             for _ in range(k)]  # fmt: skip
    for p in procs:
        p.start()
    latencies_ms: list[float] = []
    per_incident_max: list[float] = []
    missed = 0
    try:
        for _ in range(k):
            kind, _, _ = out.get(timeout=60)
            assert kind == "ready"
        time.sleep(0.1)  # every SUBSCRIBE has been processed by the server
        opener = SharedBreaker(name, client=redis.Redis.from_url(cfg.url), fail_max=5)
        opener.reset()
        for _ in range(incidents):
            t0 = time.monotonic()
            gen = opener.open(30.0).generation
            got: list[float] = []
            deadline = time.monotonic() + 5.0
            while len(got) < k and time.monotonic() < deadline:
                try:
                    kind, g, t = out.get(timeout=max(0.01, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if kind == "open" and g == gen:
                    got.append((t - t0) * 1000.0)
            missed += k - len(got)
            latencies_ms += got
            if got:
                per_incident_max.append(max(got))
            opener.reset()
            time.sleep(0.05)
    finally:
        stop.set()
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
    return {
        "k": k,
        "incidents": incidents,
        "missed": missed,
        "latency_ms": summarize(latencies_ms),
        "last_process_ms": summarize(per_incident_max),
    }


def run(cfg: Config) -> SuiteResult:
    ks = cfg.pick([8, 32], [2])
    incidents = cfg.pick(30, 2)
    data = {f"K={k}": measure_k(cfg, k, incidents) for k in ks}
    result = SuiteResult(
        suite="propagation",
        title="Propagation: breaker opened in one process, seen by K others (ms)",
        columns=["K", "incidents", "p50 ms", "p99 ms", "max ms", "last process p50 ms",
                 "missed"],
    )  # fmt: skip
    for d in data.values():
        lat, last = d["latency_ms"], d["last_process_ms"]
        result.rows.append([d["k"], d["incidents"], fmt(lat["p50"]), fmt(lat["p99"]),
                            fmt(lat["max"]), fmt(last["p50"]), d["missed"]])  # fmt: skip
    big = data[f"K={max(ks)}"]
    result.targets = [
        check(f"p99 at K={max(ks)}", "<= 50 ms", big["latency_ms"]["p99"], lambda v: v <= 50.0),
        check(f"processes that never saw it at K={max(ks)}", "== 0", float(big["missed"]),
              lambda v: v == 0),
    ]  # fmt: skip
    result.notes = [
        "Latency: from just before the opening script call to each process's cached view "
        "turning open (pub/sub event); p50/p99 over every process of every incident.",
        "A process that misses the event still sees the state at its next sync "
        "(sync_interval, 1 s by default); 'missed' counts events not seen within 5 s.",
    ]
    result.data = data
    result.chart = {
        "labels": list(data),
        "series": {
            "p50": [d["latency_ms"]["p50"] for d in data.values()],
            "p99": [d["latency_ms"]["p99"] for d in data.values()],
        },
        "ylabel": "ms until the process sees it open",
        "log": False,
    }
    return result
