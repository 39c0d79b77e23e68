"""Suite 5: failure amplification (one broken worker, scaled down): real Celery workers, one broken.

Uses ``benchmarks.broken_worker.measure(url, with_breaker, ...)`` (the Celery
helper's scenario: healthy workers take ``work`` seconds a task, the broken one fails
at once). A per-host prior-art mode is used when ``measure`` offers one (a ``mode`` or
``approach`` parameter); otherwise that row says "not available".
"""

from __future__ import annotations

import inspect
from typing import Any

from benchmarks.harness import Config, SuiteResult, fmt

COLUMNS = ["approach", "tasks", "broken took (share)", "failed", "lost", "makespan s", "trips"]


def _row(label: str, r: dict[str, Any]) -> list[Any]:
    tasks = r.get("tasks") or 0
    taken = r.get("broken_taken")
    share = f"{taken} ({taken / tasks:.0%})" if tasks and taken is not None else "-"
    return [label, tasks, share, r.get("broken_failed"), r.get("lost"),
            fmt(r.get("makespan_s")), r.get("trips")]  # fmt: skip


def run(cfg: Config) -> SuiteResult:
    result = SuiteResult("amplification", "Amplification: one broken Celery worker of three",
                         COLUMNS)  # fmt: skip
    try:
        from benchmarks.broken_worker import measure
    except ImportError as exc:
        result.available = False
        result.rows = [["all", f"not available: {exc}", "", "", "", "", ""]]
        return result
    size: dict[str, Any] = cfg.pick({"tasks": 20, "work": 0.5}, {"tasks": 6, "work": 0.2})
    params = inspect.signature(measure).parameters
    seed_param = next((p for p in ("mode", "approach") if p in params), None)
    runs: dict[str, dict[str, Any]] = {}
    for label, kwargs in [
        ("no breaker", {"with_breaker": False}),
        ("per-host gate (pybreaker + Value)",
         {"with_breaker": False, seed_param: "seed"} if seed_param else None),
        ("redisbreaker", {"with_breaker": True}),
    ]:  # fmt: skip
        if kwargs is None:
            result.rows.append([label, "not available: demo_amplification.measure has no "
                                "seed mode", "", "", "", "", ""])  # fmt: skip
            continue
        r = measure(cfg.url, **kwargs, **size)
        r.pop("logs", None)
        runs[label] = r
        result.rows.append(_row(label, r))
    result.data = {"runs": runs, "size": size}
    result.notes = [
        f"{size['tasks']} tasks of {size['work']} s on 2 healthy workers and 1 broken one "
        "(prefork, concurrency 1, -O fair); lost = never succeeded.",
    ]
    labels = list(runs)
    result.chart = {
        "labels": labels,
        "series": {
            "broken worker's share": [
                (runs[k].get("broken_taken") or 0) / max(1, runs[k].get("tasks") or 1)
                for k in labels
            ],
            "lost share": [
                (runs[k].get("lost") or 0) / max(1, runs[k].get("tasks") or 1) for k in labels
            ],
        },
        "ylabel": "share of tasks",
        "log": False,
    }
    return result
