"""Every Python example in README.md and docs/*.md runs as written, on real servers.

A block preceded by ``<!-- fragment -->`` is not an example and is left out. A block
preceded by ``<!-- celery-example: module=NAME worker="ARGS" expect="TEXT" -->`` is a
whole Celery project: it is saved as ``NAME.py``, a real worker is started from it
(``celery -A NAME worker ARGS``), then ``python NAME.py`` must exit 0 and print TEXT.
Every other block is executed in a fresh namespace. The only change made to any
block is the Redis URL, ``redis://localhost:6379/0``, which points at the suite's.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from redisbreaker.testing.workers import CeleryWorker

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
URL = "redis://localhost:6379/0"
_BLOCK = re.compile(r"(?:<!--\s*(?P<marker>[^\n]*?)\s*-->\n)?```python\n(?P<code>.*?)```", re.S)
_FIELD = re.compile(r'(\w+)=("[^"]*"|\S+)')


def _examples() -> list[Any]:
    found = []
    for page in PAGES:
        for n, m in enumerate(_BLOCK.finditer(page.read_text(encoding="utf-8"))):
            marker = m.group("marker") or ""
            if marker == "fragment":
                continue
            found.append(pytest.param(page, marker, m.group("code"), id=f"{page.name}-{n}"))
    return found


def test_every_page_has_examples() -> None:
    """The pages exist and hold runnable examples (the list below is not empty)."""
    assert {p.name for p in PAGES} >= {
        "README.md", "breaker.md", "celery.md", "transactions.md", "testing.md",
    }  # fmt: skip
    assert len(_examples()) >= 8


@pytest.mark.parametrize(("page", "marker", "code"), _examples())
def test_example_runs(
    page: Path, marker: str, code: str, redis_url: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The example runs unchanged but for the Redis URL."""
    code = code.replace(URL, redis_url)
    monkeypatch.chdir(tmp_path)
    if marker.startswith("celery-example:"):
        _run_celery_example(marker, code, redis_url, tmp_path)
        return
    exec(compile(code, f"{page.name} example", "exec"), {"__name__": "docs_example"})


def _run_celery_example(marker: str, code: str, redis_url: str, where: Path) -> None:
    fields = {k: v.strip('"') for k, v in _FIELD.findall(marker)}
    module = fields["module"]
    (where / f"{module}.py").write_text(code, encoding="utf-8")
    args = shlex.split(fields.get("worker", ""))
    pool = next((a.split("=", 1)[1] for a in args if a.startswith("--pool=")), "prefork")
    concurrency = int(args[args.index("-c") + 1]) if "-c" in args else 1
    env = {"PYTHONPATH": os.pathsep.join([str(where), str(ROOT)])}
    with CeleryWorker(
        module, broker_url=redis_url, pool=pool, concurrency=concurrency, env=env
    ) as worker:
        done = subprocess.run(
            [sys.executable, f"{module}.py"], cwd=where, capture_output=True, text=True,
            timeout=120, env={**os.environ, **env},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:] + worker.log()[-3000:]
    assert fields["expect"] in done.stdout, done.stdout
