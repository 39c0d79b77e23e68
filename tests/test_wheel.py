"""An installed wheel carries the lua/ folder and finds its scripts through importlib.resources."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_and_loads_its_scripts(tmp_path: Path) -> None:
    """Build the wheel, unpack it, import from it: every lua/*.lua loads from the package."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True,
    )  # fmt: skip
    wheel = next(tmp_path.glob("redisbreaker-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n.removeprefix("redisbreaker/lua/") for n in names if "/lua/" in n)
    expected = sorted(str(p.relative_to(ROOT / "lua")) for p in (ROOT / "lua").rglob("*.lua"))
    assert shipped == expected
    assert "redisbreaker/py.typed" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import redisbreaker, redisbreaker.scripts as s, pathlib;"
        "root = s._lua_root();"
        f"assert str(root).startswith({str(site)!r}), root;"
        "[s.source(p.stem) for p in pathlib.Path(str(root)).glob('*.lua')];"
        "print('ok')"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert out.stdout.strip() == "ok", out.stderr
