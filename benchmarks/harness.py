"""What every suite shares: interleaved timing, percentiles, round trips, environment.

The timing primitives live in :mod:`redisbreaker.bench` (so ``redisbreaker bench``
and this suite measure the same way); this module adds what only the comparison
suite needs: the suite result shape, summaries of latency samples, targets, and
process helpers.
"""

from __future__ import annotations

import multiprocessing
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from redisbreaker.bench import (
    Case,
    SendCounter,
    Stats,
    Target,
    commands_between,
    commandstats,
    count_round_trips,
    counting_client,
    machine,
    measure,
    percentile,
    server_info,
    unavailable,
    versions,
)

__all__ = [
    "Case",
    "Config",
    "SendCounter",
    "Stats",
    "SuiteResult",
    "Target",
    "check",
    "commands_between",
    "commandstats",
    "count_round_trips",
    "counting_client",
    "environment",
    "fmt",
    "machine",
    "measure",
    "mp_context",
    "percentile",
    "server_info",
    "run_alone",
    "summarize",
    "unavailable",
    "versions",
]

COMPARED = ("pybreaker", "interlock-cb", "celery", "kombu", "matplotlib", "msgpack")


@dataclass(frozen=True)
class Config:
    """How big a run is: the full run, or ``--tiny`` (seconds, for the smoke test)."""

    url: str
    tiny: bool = False

    def pick(self, full: Any, tiny: Any) -> Any:
        return tiny if self.tiny else full


@dataclass
class SuiteResult:
    """One suite's output: a table (rows of cells), targets, raw data and a chart."""

    suite: str
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # chart: {"labels": [...], "series": {name: [values]}, "ylabel": str, "log": bool}
    chart: dict[str, Any] = field(default_factory=dict)
    available: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "title": self.title,
            "available": self.available,
            "columns": self.columns,
            "rows": self.rows,
            "targets": [t.as_dict() for t in self.targets],
            "notes": self.notes,
            "data": self.data,
            "chart": self.chart,
        }


def check(name: str, target: str, value: float | None, ok: Callable[[float], bool]) -> Target:
    """A target beside its measured value (``met`` is None when it was not measured)."""
    return Target(name, target, value, None if value is None else bool(ok(value)))


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """p50, p99, max and count of latency samples (any unit)."""
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    return {
        "n": len(values),
        "p50": statistics.median(values),
        "p99": percentile(values, 99),
        "max": max(values),
    }


def fmt(value: Any, digits: int = 2) -> str:
    """A table cell: numbers rounded, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:.{digits}f}"
    return str(value)


def mp_context() -> Any:
    """Fork where available (cheap for 32 processes); each child makes its own clients."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def environment(url: str) -> dict[str, Any]:
    """Versions, machine and ``INFO server`` saved beside the results."""
    client = redis.Redis.from_url(url)
    try:
        return {"versions": versions(*COMPARED), "machine": machine(), "redis": server_info(client)}
    finally:
        client.close()


def run_alone(prog: str, run: Callable[[Config], SuiteResult], *, own_server: bool = False) -> int:
    """``python -m benchmarks.<suite>``: one suite, its table printed. The suite runs
    on ``--url``, or a private redis-server (``own_server``: it starts its own)."""
    import argparse

    from benchmarks.__main__ import text_table
    from redisbreaker.bench import redis_for

    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{prog}")
    helptext = "ignored: the suite starts its own servers" if own_server else None
    parser.add_argument("--url", default=None, help=helptext)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    if own_server:
        res = run(Config(url=args.url or "", tiny=args.tiny))
    else:
        with redis_for(args.url) as url:
            res = run(Config(url=url, tiny=args.tiny))
    print(text_table(res.as_dict()))
    return 0
