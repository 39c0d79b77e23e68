"""The benchmark code runs: every suite once in its tiny configuration (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import SUITES

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.celery  # the gate and amplification suites start real workers


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_suite_tiny_writes_every_suite(redis_url: str, tmp_path: Path) -> None:
    """`python -m benchmarks --tiny` writes JSON, markdown and charts with every suite."""
    done = _run(["-m", "benchmarks", "--tiny", "--url", redis_url, "--out", str(tmp_path)])
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "latest.json").read_text())
    assert set(report["suites"]) == set(SUITES)
    assert {"versions", "machine", "redis"} <= set(report["environment"])
    assert report["environment"]["redis"]["redis_version"]
    for name, suite in report["suites"].items():
        assert "error" not in suite["data"], (name, suite["data"].get("error"))
        assert suite["columns"], name
        assert suite["rows"], name
        for target in suite["targets"]:
            assert {"name", "target", "measured", "met"} <= set(target)
    assert report["suites"]["call_overhead"]["targets"]
    assert "### " in (tmp_path / "latest.md").read_text()
    assert list(tmp_path.glob("*.png"))


def test_cli_bench_tiny_json(redis_url: str) -> None:
    """`redisbreaker bench --tiny --json` prints every case and every target."""
    done = _run(["-m", "redisbreaker.cli", "bench", "--tiny", "--json", "--url", redis_url])
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert {"versions", "machine", "redis", "cases", "targets"} <= set(result)
    for name in ("redisbreaker / success", "redisbreaker / failure", "bare call / success"):
        case = result["cases"][name]
        assert {"median_us", "p99_us", "round_trips_per_call"} <= set(case)
    assert result["cases"]["redisbreaker / failure"]["round_trips_per_call"] is not None
    assert len(result["targets"]) == 6


def test_cli_without_subcommand_prints_help() -> None:
    """`redisbreaker` alone prints usage and exits 2."""
    from redisbreaker.cli import main

    assert main([]) == 2
