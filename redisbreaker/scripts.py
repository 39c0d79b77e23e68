"""Lua scripts: read once from the package, registered per client, called by SHA.

Each operation is one file in ``lua/``. A script may start with a line
``--! use: name[, name]`` to have ``lua/lib/<name>.lua`` prepended, so helpers
shared by several operations are written once. The SHA of the combined text is
the script's version; redis-py's ``Script`` sends EVALSHA and reloads the script
on NOSCRIPT (after a ``SCRIPT FLUSH`` or a failover to a fresh replica).
"""

from __future__ import annotations

import functools
import re
import threading
import weakref
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Protocol

_USE = re.compile(r"^--! use: *([\w, ]+)$", re.MULTILINE)


def _lua_root() -> Traversable:
    # Installed wheels carry the top-level lua/ folder inside the package
    # (hatchling force-include); a source checkout reads it from the repository.
    packaged = resources.files("redisbreaker") / "lua"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "lua"


@functools.cache
def source(name: str) -> str:
    """The full text of script ``name`` (without ``.lua``), libraries included."""
    root = _lua_root()
    text = (root / f"{name}.lua").read_text(encoding="utf-8")
    parts: list[str] = []
    for match in _USE.finditer(text):
        for lib in (s.strip() for s in match.group(1).split(",")):
            parts.append((root / "lib" / f"{lib}.lua").read_text(encoding="utf-8"))
    parts.append(text)
    return "\n".join(parts)


class _Registrar(Protocol):
    def register_script(self, script: str) -> Any: ...


_registered: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
_registered_lock = threading.Lock()


def for_client(client: _Registrar, name: str) -> Any:
    """Script ``name`` registered on ``client`` once, shared by every object using it
    (registering hashes the source: tens of microseconds, not to be paid per object)."""
    try:
        return _registered[client][name]
    except KeyError:
        pass
    with _registered_lock:
        by_name = _registered.setdefault(client, {})
        script = by_name.get(name)
        if script is None:
            script = by_name[name] = register(client, name)
        return script


def register(client: _Registrar, name: str) -> Any:
    """Register script ``name`` on ``client`` (no I/O; the script loads on first use).

    Works for ``redis.Redis``, ``redis.RedisCluster`` and their asyncio twins; the
    returned object is called as ``script(keys=[...], args=[...])``.
    """
    return client.register_script(source(name))
