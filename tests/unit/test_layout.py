"""The shape of the code base: what the package holds, who may use which names, and
that the README's layout table lists every module."""

from __future__ import annotations

import ast
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import redisbreaker

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "redisbreaker"
CHECKED = [PACKAGE, ROOT / "tests", ROOT / "benchmarks", ROOT / "examples"]


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _defined(tree: ast.AST) -> set[str]:
    """Underscore names a module defines: functions, classes, attributes, globals."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if _private(n)}


def test_no_module_uses_another_modules_underscore_names() -> None:
    """An underscore name the library defines is used only in the module defining it
    (or through ``self``/``cls`` in a subclass); nobody imports one."""
    library = {
        name for path in PACKAGE.rglob("*.py") for name in _defined(ast.parse(path.read_text()))
    }
    found = []
    for folder in CHECKED:
        for path in folder.rglob("*.py"):
            tree = ast.parse(path.read_text())
            mine = _defined(tree)
            where = path.relative_to(ROOT)
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and _private(node.attr):
                    own = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
                    if not own and node.attr in library and node.attr not in mine:
                        found.append(f"{where}:{node.lineno} .{node.attr}")
                elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "redisbreaker"
                ):
                    found += [
                        f"{where}:{node.lineno} import {a.name}"
                        for a in node.names
                        if _private(a.name)
                    ]
    assert found == []


def test_the_package_holds_the_library_only() -> None:
    """No demo or test-support module ships; importing redisbreaker imports no Celery."""
    modules = [m.name for m in pkgutil.walk_packages(redisbreaker.__path__, "redisbreaker.")]
    assert not [m for m in modules if "demo" in m or "support" in m]
    code = "import sys, redisbreaker; print('celery' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr


def test_readme_layout_lists_every_module() -> None:
    """Every module of the package is named in the README's layout table."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| module | what |") :].split("\n\n")[0]
    named = set(re.findall(r"`([\w/.]+)`", table))
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        package = rel[: -len("__init__.py")] if rel.endswith("__init__.py") else None
        if rel not in named and not (package and package in named):
            missing.append(rel)
    assert missing == []


def test_celery_integration_without_celery_names_the_extra() -> None:
    """Importing redisbreaker.celery without Celery says which extra to install."""
    code = (
        "import sys; sys.modules['celery'] = None\n"
        "try:\n    import redisbreaker.celery\nexcept ImportError as e:\n    print(e)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "pip install 'redisbreaker[celery]'" in done.stdout, done.stderr


def test_version_comes_from_the_package_metadata() -> None:
    """One source for the version: the installed distribution's metadata."""
    from importlib import metadata

    assert redisbreaker.__version__ == metadata.version("redisbreaker")
