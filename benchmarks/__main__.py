"""``python -m benchmarks``: run every suite, print the tables, write JSON, markdown, charts.

Options: ``--url`` (else ``REDISBREAKER_URL``, else a private redis-server), ``--tiny``
(every suite once in a tiny configuration: seconds; what ``make test`` runs),
``--out DIR`` (default ``benchmarks/results``), ``--only SUITE`` (repeatable).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import Config, SuiteResult, environment, fmt
from redisbreaker.bench import quiet_events, redis_for

SUITES = [
    "call_overhead",
    "gate",
    "propagation",
    "contention",
    "amplification",
    "votes",
    "window_cost",
    "listing",
    "dead_letter",
    "cluster_pubsub",
    "fleet",
]
DEFAULT_OUT = Path(__file__).parent / "results"


def run_suite(name: str, cfg: Config) -> SuiteResult:
    module = importlib.import_module(f"benchmarks.{name}")
    started = time.monotonic()
    try:
        result: SuiteResult = module.run(cfg)
    except Exception as exc:  # one broken suite must not hide the others' results
        result = SuiteResult(name, name, ["error"], available=False)
        result.rows = [[f"{type(exc).__name__}: {exc}"]]
        result.data = {"error": traceback.format_exc()}
    result.data["seconds"] = round(time.monotonic() - started, 1)
    return result


def text_table(res: dict[str, Any]) -> str:
    cols = res["columns"]
    rows = [[str(c) for c in row] for row in res["rows"]]
    widths = [max([len(c), *(len(r[i]) for r in rows if i < len(r))]) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
    out = [f"== {res['title']}", line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) for r in rows]
    out += target_lines(res)
    out += [f"  note: {n}" for n in res["notes"]]
    return "\n".join(out)


def verdict(t: dict[str, Any]) -> str:
    return "not measured" if t["met"] is None else "met" if t["met"] else "MISSED"


def target_lines(res: dict[str, Any]) -> list[str]:
    return [
        f"  target: {t['name']}: wanted {t['target']}, measured {fmt(t['measured'], 4)}"
        f" -> {verdict(t)}"
        for t in res["targets"]
    ]


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    v, m, r = env["versions"], env["machine"], env["redis"]
    out = [
        f"Measured {m['date']} on {m['cpus']} CPUs ({m['machine']}, {v['platform']}), "
        f"Redis {r.get('redis_version', '?')}, Python {v['python']}, redis-py {v['redis']}, "
        f"hiredis {v['hiredis']}, pybreaker {v.get('pybreaker')}, "
        f"interlock-cb {v.get('interlock-cb')}, celery {v.get('celery')}"
        f"{' (--tiny: not representative)' if report['tiny'] else ''}.",
        "",
    ]
    for res in report["suites"].values():
        out += [f"### {res['title']}", ""]
        out.append("| " + " | ".join(res["columns"]) + " |")
        out.append("|" + "---|" * len(res["columns"]))
        for row in res["rows"]:
            cells = [str(c) for c in row] + [""] * (len(res["columns"]) - len(row))
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        if res["targets"]:
            out += ["", "| target | wanted | measured | result |", "|---|---|---|---|"]
            for t in res["targets"]:
                out.append(
                    f"| {t['name']} | {t['target']} | {fmt(t['measured'], 4)} | {verdict(t)} |"
                )
        out += [""] + [f"- {n}" for n in res["notes"]] + [""]
    return "\n".join(out)


def charts(report: dict[str, Any], out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    for name, res in report["suites"].items():
        spec = res.get("chart") or {}
        labels, series = spec.get("labels"), spec.get("series")
        if not labels or not series:
            continue
        fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(labels) + 2), 4.5))
        width = 0.8 / len(series)
        for i, (label, values) in enumerate(series.items()):
            xs = [j + i * width for j in range(len(labels))]
            ax.bar(xs, [v if v is not None else 0 for v in values], width, label=label)
        ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(labels))])
        ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(spec.get("ylabel", ""))
        if spec.get("log"):
            ax.set_yscale("log")
        ax.set_title(res["title"], fontsize=9)
        if len(series) > 1:
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--url", default=None)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--only", action="append", choices=SUITES, default=None)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING)
    with redis_for(args.url) as url:
        cfg = Config(url=url, tiny=args.tiny)
        report: dict[str, Any] = {
            "tiny": args.tiny,
            "environment": environment(url),
            "suites": {},
        }
        for name in args.only or SUITES:
            print(f"-- running {name} ...", file=sys.stderr, flush=True)
            res = run_suite(name, cfg).as_dict()
            report["suites"][name] = res
            print(text_table(res) + "\n", flush=True)
        quiet_events()
    (args.out / "latest.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / "latest.md").write_text(markdown(report))
    report["charts"] = charts(report, args.out)
    print(f"wrote {args.out / 'latest.json'}, {args.out / 'latest.md'} and "
          f"{len(report['charts'])} charts", file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
