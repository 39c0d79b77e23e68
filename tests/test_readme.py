"""The README's Python examples run as written (against the suite's own Redis)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    return text[start : end if end != -1 else None]


def _blocks(title: str) -> list[str]:
    return _BLOCK.findall(_section(title))


@pytest.mark.parametrize(
    ("title", "index"),
    [("# redisbreaker", 0), ("## Testing code that uses a breaker", 0)],
)
def test_readme_example_runs(redis_url: str, title: str, index: int) -> None:
    """The example runs unchanged but for the URL, which points at the test server."""
    code = _blocks(title)[index].replace("redis://localhost:6379/0", redis_url)
    exec(compile(code, f"README.md: {title}", "exec"), {"__name__": "readme_example"})
