"""Suite 11: the capacity model, measured: what a fleet of P processes x B breakers costs Redis.

Three parts, all reading Redis CPU from the server's own counters (``INFO cpu``
``used_cpu_user + used_cpu_sys``), never from wall time:

1. **Constants** (``benchmarks/fleet_costs.py``): server CPU per operation, through
   the library: ``c_flush`` and ``c_flush_call`` (the background syncer's
   ``breaker_flush``: per breaker, and per call), ``c_sync`` (a lazy sync:
   ``breaker_admit`` carrying the successes counted meanwhile), ``c_record`` (a
   recorded failure), ``c_transition`` and ``c_event`` (an operator's open or reset,
   and its delivery to each subscriber), ``c_vote`` and ``c_begin`` (transactions),
   ``c_conn`` and ``c_idle``, one request at a time from one client; the flush,
   ``c_sync`` and ``c_record`` again under load; and the library's report calls
   pipelined (``c_pipe``, the ``batched`` strategy).
2. **Fleets**: the library itself, up to P = 200 and B = 100 (``benchmarks/fleet_sim.py``:
   each simulated process its own client, connection, hub and background syncer;
   ``lazy`` fleets turn it off: ``background_sync=False``; two CPUs cannot drive 1000
   simulated processes, each with its own hub and syncer thread, on time), and the
   library's requests replayed at the load the model calls half a core, up to
   P = 1000 x B = 100 and beyond (``benchmarks/fleet_replay.py``). Measured CPU and
   script calls against :mod:`benchmarks.fleet_model`'s prediction.
3. **The largest fleet at 50% of one core**, from the model, per sync strategy
   (``synced``: the library on one server; ``lazy``: the library before the syncer,
   or with ``background_sync=False``), and what P = 1000 x B = 100 would need.

Run alone: ``python -m benchmarks.fleet [--url URL] [--tiny]``.
"""

from __future__ import annotations

import heapq
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import redis

from benchmarks import fleet_costs as costs
from benchmarks import fleet_replay as replay
from benchmarks import fleet_sim as sim
from benchmarks.fleet_model import STRATEGIES, Constants, Fleet, error, largest, load
from benchmarks.harness import Config, SuiteResult, check, fmt, run_alone
from redisbreaker.breaker import SharedBreaker
from redisbreaker.config import client_from_url
from redisbreaker.keys import KeySpace
from redisbreaker.transaction import Transaction

# The fleet whose size the README quotes: each breaker called 5 times a second in each
# process, 1% of calls failing, the default sync_interval, and each breaker tripping
# once an hour (open, half-open, closed: 3 transitions, each heard by every process).
REFERENCE = Fleet(processes=1, breakers=100, calls=5.0, failure_share=0.01,
                  sync_interval=1.0, transitions=3 * 100 / 3600)  # fmt: skip
BUDGET = 0.5  # of one core
# The model is judged where it is meant to be used, near capacity, where its under-load
# constants were measured; a Redis doing less spends more per operation (its caches go
# cold between requests, and each request wakes it alone), so fleets below this share
# of a core are shown, not judged.
JUDGED_FROM = 0.25
WANTED_ERROR = 0.25


# -- part 2: fleets --------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One fleet to run: through the library, or its requests replayed."""

    label: str
    fleet: Fleet
    driver: str  # "library" or "replay"
    warm: float
    window: float
    workers: int = 2
    idle_after_warm: bool = False  # calls stop before measuring starts: idle breakers
    at_budget: bool = False  # the size the model says one core carries at BUDGET


def library_cases(cfg: Config) -> list[Case]:
    if cfg.tiny:
        tiny = Fleet(4, 3, calls=20.0, failure_share=0.05, sync_interval=0.25, transitions=4.0,
                     votes=100.0)  # fmt: skip
        return [
            Case("tiny", tiny, "library", 0.6, 1.0, 1),
            Case("tiny lazy", replace(tiny, strategy="lazy"), "library", 0.6, 1.0, 1),
        ]
    t5 = Fleet(100, 100, calls=0.5, failure_share=0.01, sync_interval=5.0)
    return [
        Case("100x10", Fleet(100, 10, calls=2.0, failure_share=0.01), "library", 4, 12),
        Case("100x10 lazy", Fleet(100, 10, calls=2.0, failure_share=0.01, strategy="lazy"),
             "library", 4, 12),
        Case("100x100 T=5s", t5, "library", 10, 20, 4),
        Case("100x100 T=5s lazy", replace(t5, strategy="lazy"), "library", 10, 20, 4),
        Case("100x100 T=5s batched", replace(t5, strategy="batched"), "library", 10, 20, 4),
        Case("200x10 T=5s", Fleet(200, 10, calls=0.5, failure_share=0.01, sync_interval=5.0),
             "library", 10, 20, 4),
        Case("200x100 T=30s", Fleet(200, 100, calls=0.05, failure_share=0.01,
             sync_interval=30.0), "library", 40, 40, 4),
        Case("200x10 + events, votes", Fleet(200, 10, calls=2.0, failure_share=0.01,
             transitions=10.0, votes=300.0), "library", 4, 12, 4),
        # (a long warm-up: the first call of each of 10,000 breakers asks Redis, and a
        # lagging driver would still be making them when the window opens)
        Case("200x50 idle", Fleet(200, 50, calls=2.0, sync_interval=1.0), "library", 12, 10, 4,
             idle_after_warm=True),
    ]  # fmt: skip


def replay_cases(cfg: Config, c: Constants) -> list[Case]:
    """Fleets at the model's 50%-of-a-core size, replayed (the library's bytes)."""
    if cfg.tiny:
        tiny = Fleet(4, 3, calls=20.0, failure_share=0.05, sync_interval=0.25)
        return [Case(f"tiny replay {s}", replace(tiny, strategy=s), "replay", 0.3, 0.7, 1)
                for s in STRATEGIES]  # fmt: skip
    cases = []
    for b in (100, 10):
        for s in STRATEGIES if b == 100 else STRATEGIES[:2]:
            shape = replace(REFERENCE, breakers=b, transitions=3 * b / 3600, strategy=s)
            p = largest(shape, c, BUDGET)
            if p >= 1:
                cases.append(Case(f"{p}x{b} {s}, model 50%", shape.with_processes(p), "replay",
                                  3, 15, at_budget=True))  # fmt: skip
    return cases


def _traffic(url: str, prefix: str, fleet: Fleet) -> Callable[[float], None] | None:
    """The fleet's transitions (an operator's open/reset of a breaker no simulated
    process uses) and votes, paced, from this process until ``end``."""
    if not fleet.transitions and not fleet.votes:
        return None

    def during(end: float) -> None:
        client = client_from_url(url, max_connections=8)
        flip = SharedBreaker("fleet-events", client=client, prefix=prefix, fail_max=sim.NEVER)
        opened = False
        tx: Transaction | None = None
        voted = 0
        # (when, kind) with kind 0 a transition, 1 a vote; the window's start is now.
        now = time.monotonic()
        heap: list[tuple[float, int]] = []
        if fleet.transitions:
            heap.append((now, 0))
        if fleet.votes:
            heap.append((now, 1))
        try:
            while heap:
                when, kind = heapq.heappop(heap)
                if when >= end:
                    break
                sim.sleep_until(when)
                if kind == 0:
                    if opened:
                        flip.reset()
                    else:
                        flip.open(3600)
                    opened = not opened
                    heapq.heappush(heap, (when + 1.0 / fleet.transitions, 0))
                else:
                    if tx is None or voted == fleet.votes_per_tx:
                        tx, voted = Transaction.begin(fleet.votes_per_tx, timeout=600,
                                                      client=client), 0  # fmt: skip
                    tx.vote(voted, True)
                    voted += 1
                    heapq.heappush(heap, (when + 1.0 / fleet.votes, 1))
        finally:
            client.close()

    return during


@dataclass
class Outcome:
    """A fleet's model prediction beside its measurement."""

    case: Case
    model_cpu: float
    model_scripts: float
    cpu: float
    scripts: float
    clients: int
    offered: float  # share of the planned load the clients offered (1.0: all of it)
    detail: dict[str, Any]

    @property
    def error(self) -> float | None:
        return error(self.model_cpu, self.cpu)


def run_case(
    cfg: Config, case: Case, c: Constants, captured: replay.Capture, channel: str
) -> Outcome:
    """Run one fleet; its measurement beside the model's prediction."""
    prefix = f"rbfleet{uuid.uuid4().hex[:6]}:"
    fleet = case.fleet
    predicted_fleet = fleet
    if case.driver == "replay":
        run = replay.run_replay(cfg.url, fleet, captured, channel=channel, warm=case.warm,
                                window=case.window, workers=case.workers)  # fmt: skip
        # The replay sends no transitions (a few an hour: nothing to measure).
        predicted_fleet = replace(fleet, transitions=0.0)
        planned = load(predicted_fleet, c).script_calls * case.window
        offered = run.total("requests") / planned if planned else 1.0
    else:
        traffic = _traffic(cfg.url, prefix, fleet)
        run = sim.run_library(
            cfg.url, fleet, prefix=prefix, warm=case.warm, window=case.window,
            workers=case.workers,
            # (the syncers carry what was counted within a tick of the view's end: calls
            # stop 2 sync_intervals before measuring, so the window sees none of it)
            calls_until=case.warm - 2 * fleet.sync_interval if case.idle_after_warm else None,
            during=traffic,
        )  # fmt: skip
        if case.idle_after_warm:  # nothing is called while measuring
            predicted_fleet = replace(fleet, calls=0.0)
        if fleet.transitions:  # the controller's own hub hears the events too
            predicted_fleet = replace(predicted_fleet, subscribers=fleet.processes + 1)
        planned = fleet.pairs * predicted_fleet.calls * case.window
        offered = run.total("calls") / planned if planned else 1.0
    _forget(cfg.url, prefix)
    model = load(predicted_fleet, c)
    d = run.delta
    return Outcome(
        case, model.total_cpu, model.script_calls, d.cpu_share, d.scripts / d.seconds,
        d.clients, offered,
        {"model": asdict(model), "measured": asdict(d), "workers": run.workers},
    )  # fmt: skip


def _forget(url: str, prefix: str) -> None:
    """Delete a fleet's keys (a user's Redis keeps nothing of the run)."""
    client = redis.Redis.from_url(url)
    try:
        batch = []
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.unlink(*batch)
                batch = []
        if batch:
            client.unlink(*batch)
    finally:
        client.close()


# -- the suite -------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{100 * x:.2f}" if x < 0.1 else f"{100 * x:.1f}"


def _shape(f: Fleet) -> str:
    return f"{f.calls:g}/s, {100 * f.failure_share:g}% fail"


def run(cfg: Config) -> SuiteResult:
    log = logging.getLogger("redisbreaker")
    level = log.level
    log.setLevel(logging.ERROR)  # the fleets' transitions are on purpose: no WARNING each
    try:
        return _run(cfg)
    finally:
        log.setLevel(level)


def _run(cfg: Config) -> SuiteResult:
    result = SuiteResult(
        "fleet",
        "Capacity model: Redis CPU of P processes x B breakers, model vs measured",
        ["fleet", "P x B", "calls per breaker per process", "sync_interval", "strategy",
         "driver", "script calls/s model", "measured", "Redis CPU % model", "measured",
         "error"],
    )  # fmt: skip
    prefix = f"rbconst{uuid.uuid4().hex[:6]}:"
    cap_prefix = f"rbcap{uuid.uuid4().hex[:6]}:"
    channel = KeySpace.of(cap_prefix, "cb", "svc-0").channel()
    try:
        quiet, const_data = costs.measure_constants(cfg, prefix)
        captured = replay.capture(cfg.url, cap_prefix, cfg.pick(100, 5), 1.0)
        c, load_data = costs.measure_under_load(cfg, quiet, captured, channel)
        outcomes = [
            run_case(cfg, case, c, captured, channel)
            for case in library_cases(cfg) + replay_cases(cfg, c)
        ]
    finally:
        _forget(cfg.url, prefix)
        _forget(cfg.url, cap_prefix)
    for o in outcomes:
        f = o.case.fleet
        result.rows.append([
            o.case.label, f"{f.processes}x{f.breakers}", _shape(f), f"{f.sync_interval:g}s",
            f.strategy, o.case.driver, fmt(o.model_scripts, 0), fmt(o.scripts, 0),
            _pct(o.model_cpu), _pct(o.cpu),
            "-" if o.error is None else f"{100 * o.error:+.0f}%",
        ])  # fmt: skip
    judged = [abs(o.error) for o in outcomes if o.error is not None and o.cpu >= JUDGED_FROM]
    result.targets = [
        check(f"largest |model - measured| / measured, fleets >= {JUDGED_FROM:.0%} of a core",
              f"<= {WANTED_ERROR:.0%}", max(judged) if judged else None,
              lambda x: x <= WANTED_ERROR),
    ]  # fmt: skip
    sizes = _largest_table(c)
    result.notes = [
        *_constant_notes(quiet, const_data, c, load_data),
        *_size_notes(sizes, outcomes),
        "Redis CPU is the server's own used_cpu_user + used_cpu_sys over each window (the "
        "model includes the idle server); script calls are INFO commandstats. Library "
        "fleets run real breakers (every planned call was made: data.fleets[].offered); "
        "replayed fleets send the library's captured request bytes at the model's rates.",
    ]
    result.data = {
        "constants_us": asdict(c), "quiet_constants_us": asdict(quiet),
        "constants": const_data, "under_load": load_data, "reference": asdict(REFERENCE),
        "largest_at_50pct": sizes,
        "fleets": [
            {"label": o.case.label, "fleet": asdict(o.case.fleet), "driver": o.case.driver,
             "model_cpu": o.model_cpu, "cpu": o.cpu, "model_scripts": o.model_scripts,
             "scripts": o.scripts, "clients": o.clients, "offered": o.offered,
             "error": o.error, **o.detail}
            for o in outcomes
        ],
    }  # fmt: skip
    result.chart = {
        "labels": [o.case.label for o in outcomes],
        "series": {"model": [100 * o.model_cpu for o in outcomes],
                   "measured": [100 * o.cpu for o in outcomes]},
        "ylabel": "Redis CPU, % of one core",
        "log": True,
    }  # fmt: skip
    return result


def _largest_table(c: Constants) -> list[dict[str, Any]]:
    """Per strategy and B: the largest P at BUDGET, and the cores P = 1000 would need."""
    rows = []
    for strategy in STRATEGIES:
        for b in (10, 100):
            shape = replace(REFERENCE, breakers=b, transitions=3 * b / 3600, strategy=strategy)
            p = largest(shape, c, BUDGET)
            cores = load(shape.with_processes(1000), c).total_cpu
            rows.append({"strategy": strategy, "breakers": b, "processes": p, "pairs": p * b,
                         "cores_for_1000": cores})  # fmt: skip
    return rows


def _constant_notes(
    quiet: Constants, data: dict[str, Any], c: Constants, loaded: dict[str, Any]
) -> list[str]:
    ex, med = data["exec_us"], data["median_us"]
    low, high = costs.PIPE_DEPTHS

    def e(name: str) -> str:
        return f" (script exec {ex[name]:.1f})" if name in ex else ""

    paced = [f"{med[k]:.0f} µs at {k.split('@')[1]}" for k in med if k.startswith("sync@")]
    share = max(max(v) for v in loaded["cpu_share"].values())
    lmed = loaded["median_us"]
    llow, lhigh = loaded["flush_depths"]
    return [
        f"the background syncer's breaker_flush, µs of Redis CPU per breaker, one client "
        f"sending one call at a time: {low} per call {med[f'flush{low}']:.1f}"
        f"{e(f'flush{low}')}, {high} per call {med[f'flush{high}']:.1f}{e(f'flush{high}')}"
        f": c_flush {quiet.flush:.1f} per breaker + c_flush_call {quiet.flush_call:.1f} "
        f"per call; under load ({loaded['processes']} processes) {llow} per call "
        f"{lmed[f'flush{llow}']:.1f}, {lhigh} per call {lmed[f'flush{lhigh}']:.1f}: "
        f"c_flush {c.flush:.1f} + c_flush_call {c.flush_call:.1f}",
        f"constants, µs of Redis CPU per operation, one client sending one request at a "
        f"time (medians of {data['rounds']} rounds of {data['ops_per_round']}): c_sync "
        f"{quiet.sync:.1f}{e('sync')}, c_record {quiet.record:.1f}{e('record')}, "
        f"c_transition {quiet.transition:.1f}, c_event {quiet.event:.2f} per subscriber "
        f"({data['listeners']} listening), c_vote {quiet.vote:.1f}{e('vote')}, c_begin "
        f"{quiet.begin:.1f}, c_conn {quiet.conn:.3f} per idle connection per second, "
        f"c_idle {quiet.idle:.0f} per second",
        f"under load ({loaded['processes']} processes x {loaded['breakers']} breakers "
        f"replayed, up to {100 * share:.0f}% of a core): c_sync {c.sync:.1f}, c_record "
        f"{c.record:.1f}; the model sizes with these",
        f"batched, µs per breaker: the library's report calls pipelined (FCALL), "
        f"{low} per round trip {med[f'pipe{low}']:.1f}{e(f'pipe{low}')}, {high} per round "
        f"trip {med[f'pipe{high}']:.1f}{e(f'pipe{high}')}",
        *(
            [f"a lazy sync paced by one client costs {', '.join(paced)}: a quiet Redis "
             "spends more per operation, so below a tenth of a core the model reads low"]
            if paced else []
        ),
    ]  # fmt: skip


def _size_notes(sizes: list[dict[str, Any]], outcomes: list[Outcome]) -> list[str]:
    def row(strategy: str, b: int) -> dict[str, Any]:
        return next(r for r in sizes if (r["strategy"], r["breakers"]) == (strategy, b))

    ref = REFERENCE
    parts = [
        f"{s}: {row(s, 100)['processes']} x 100 or {row(s, 10)['processes']} x 10 "
        f"(1000 x 100 would need {row(s, 100)['cores_for_1000']:.2f} cores)"
        for s in STRATEGIES
    ]
    out = [
        f"largest fleet one Redis core carries at {BUDGET:.0%} CPU (model; each breaker "
        f"called {ref.calls:g}/s per process, {100 * ref.failure_share:g}% failing, tripping "
        f"once an hour, sync_interval {ref.sync_interval:g} s): " + "; ".join(parts),
    ]
    for o in outcomes:
        if o.case.at_budget and o.cpu > 0:
            f = o.case.fleet
            out.append(
                f"replayed at {f.processes} x {f.breakers} ({f.strategy}), Redis used "
                f"{100 * o.cpu:.1f}% of a core (model {100 * o.model_cpu:.1f}%)"
            )
    return out


def main() -> int:
    return run_alone("fleet", run)


if __name__ == "__main__":
    raise SystemExit(main())
