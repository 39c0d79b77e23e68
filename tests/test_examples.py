"""The examples in examples/ (what `make demo` runs) run to completion on a real Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.celery  # two of them start real workers


@pytest.mark.parametrize(
    ("example", "expect"),
    [
        ("shared_breaker.py", "1 trip cluster-wide"),
        ("broken_worker.py", "lost 0"),
        ("transactions.py", "callback no failure -> COMMIT   databases with rows: 100 of 100"),
    ],
)
def test_example_runs(redis_url: str, example: str, expect: str) -> None:
    """Each example exits 0 and prints its result line."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / example)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "REDISBREAKER_URL": redis_url},
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert expect in done.stdout, done.stdout[-3000:]
