"""Lua scripts: read once from the package, registered per client, called by SHA.

Each operation is one file in ``lua/``. A file (script or library) may start with a
line ``--! use: name[, name]`` naming the libraries in ``lua/lib/`` it uses; they are
resolved recursively, each included once, before the file that needs it, so the
order in a header cannot break a script. The SHA of the combined text is the script's
version; redis-py's ``Script`` sends EVALSHA and reloads the script on NOSCRIPT
(after a ``SCRIPT FLUSH`` or a failover to a fresh replica).

A Redis error names a line of the combined text (``user_script:123``);
:func:`explain` adds the source file and line it came from.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
import weakref
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Protocol

_USE = re.compile(r"^--! use: *([\w, ]+)$", re.MULTILINE)
_LINE = re.compile(r"user_(script|function):(\d+)")
_CALL = re.compile(r"redis\.p?call\('(\w+)'")


def _lua_root() -> Traversable:
    # Installed wheels carry the top-level lua/ folder inside the package
    # (hatchling force-include); a source checkout reads it from the repository.
    packaged = resources.files("redisbreaker") / "lua"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "lua"


@dataclass(frozen=True)
class Compiled:
    """A script's full text and where each of its lines came from."""

    text: str
    parts: tuple[tuple[int, int, str], ...]  # (first line, line count, "lua/<path>")

    def where(self, line: int) -> str | None:
        """``lua/<file>:<line>`` for a line of :attr:`text` (1-based)."""
        for first, count, path in self.parts:
            if first <= line < first + count:
                return f"{path}:{line - first + 1}"
        return None


def _uses(text: str) -> list[str]:
    return [lib.strip() for m in _USE.finditer(text) for lib in m.group(1).split(",")]


@functools.cache
def compiled(name: str) -> Compiled:
    """Script ``name`` (without ``.lua``) with every library it needs, recursively."""
    order = _with_libraries([name])
    return _join(order)


def _with_libraries(names: list[str]) -> list[tuple[str, str]]:
    """(display path, text) of the libraries ``names`` need, each once and before its
    users, then of each script itself."""
    root = _lua_root()
    order: list[tuple[str, str]] = []  # (display path, text)
    done: set[str] = set()

    def include(lib: str, chain: tuple[str, ...]) -> None:
        if lib in done:
            return
        if lib in chain:
            raise RuntimeError(f"lua/lib/{lib}.lua: circular --! use: {' -> '.join(chain)}")
        text = (root / "lib" / f"{lib}.lua").read_text(encoding="utf-8")
        for dep in _uses(text):
            include(dep, (*chain, lib))
        done.add(lib)
        order.append((f"lua/lib/{lib}.lua", text))

    mains = [(name, (root / f"{name}.lua").read_text(encoding="utf-8")) for name in names]
    for name, main in mains:
        for lib in _uses(main):
            include(lib, (name,))
    order += [(f"lua/{name}.lua", main) for name, main in mains]
    return order


def _join(order: list[tuple[str, str]]) -> Compiled:
    parts: list[tuple[int, int, str]] = []
    line = 1
    for path, text in order:
        count = text.count("\n") + (0 if text.endswith("\n") else 1)
        parts.append((line, count, path))
        line += count + (1 if text.endswith("\n") else 0)  # the joining newline
    return Compiled("\n".join(text for _, text in order), tuple(parts))


# The scripts that run as one Redis Functions library on Redis 7+ (see
# redisbreaker/functions.py): the breaker's, called on every recorded failure.
FUNCTION_SCRIPTS = (
    "breaker_admit", "breaker_report", "breaker_flush", "breaker_operate", "breaker_snapshot",
    "gate_claim",
)  # fmt: skip


@dataclass(frozen=True)
class Library:
    """The Redis Functions library of :data:`FUNCTION_SCRIPTS`: its name, which carries
    its version (a new release loads beside an old one, so a fleet being upgraded runs
    both), its code, and each script's function name."""

    name: str
    code: str
    functions: dict[str, str]
    compiled: Compiled  # the code, for mapping an error's line to its source


@functools.cache
def library() -> Library:
    """Every library the breaker scripts use, once, then each script's body wrapped as a
    function of (KEYS, ARGV): the body reads them as it does under EVAL."""
    order = _with_libraries(list(FUNCTION_SCRIPTS))
    libs, mains = order[: -len(FUNCTION_SCRIPTS)], order[-len(FUNCTION_SCRIPTS) :]
    version = hashlib.sha1(
        "\n".join(text for _, text in order).encode(), usedforsecurity=False
    ).hexdigest()[:12]
    names = {name: f"rb_{version}_{name}" for name in FUNCTION_SCRIPTS}
    wrapped: list[tuple[str, str]] = []
    for name, (path, text) in zip(FUNCTION_SCRIPTS, mains, strict=True):
        opening = f"redis.register_function('{names[name]}', function(KEYS, ARGV)"
        wrapped += [("(wrapper)", opening), (path, text.rstrip("\n")), ("(wrapper)", "end)")]
    header = ("(header)", f"#!lua name=redisbreaker_{version}")
    joined = _join([header, *libs, *wrapped])
    return Library(f"redisbreaker_{version}", joined.text, names, joined)


def source(name: str) -> str:
    """The full text of script ``name`` (without ``.lua``), libraries included."""
    return compiled(name).text


def explain(name: str, message: str) -> str:
    """``message`` (a Redis error from script ``name``) with the source file and line
    its ``user_script:<line>`` came from, when it names one."""
    found = _LINE.search(message)
    if found is None:
        return message
    line = int(found.group(2))
    # An FCALL's error names a line of the whole library, an EVAL's of the script.
    code = library().compiled if found.group(1) == "function" else compiled(name)
    where = code.where(line)
    if where is None:
        return message
    # Redis does not name the command a script was refused (an ACL): the source does.
    lines = code.text.splitlines()
    command = _CALL.search(lines[line - 1]) if 0 < line <= len(lines) else None
    return f"{message} [{where}{f', {command.group(1)}' if command else ''}]"


class _Registrar(Protocol):
    def register_script(self, script: str) -> Any: ...


_registered: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
_registered_lock = threading.Lock()


def for_client(client: _Registrar, name: str) -> Any:
    """Script ``name`` registered on ``client`` once, shared by every object using it
    (registering hashes the source: tens of microseconds, not to be paid per object).
    The breaker's scripts (:data:`FUNCTION_SCRIPTS`) are FCALLs of one library where
    Redis has Functions (:mod:`redisbreaker.functions`); either way the result is
    called as ``script(keys=[...], args=[...])``.

    The result holds ``client`` weakly (a ``weakref.proxy``): this registry is keyed
    weakly by the client, and a value that held it would keep every client that ever
    ran a script alive, with its pool and sockets. So a caller keeps its client for as
    long as it calls the script (a breaker holds both)."""
    try:
        return _registered[client][name]
    except KeyError:
        pass
    with _registered_lock:
        by_name = _registered.setdefault(client, {})
        script = by_name.get(name)
        if script is None:
            if name in FUNCTION_SCRIPTS:
                from redisbreaker import functions  # (it imports this module)

                mode = by_name.get("(mode)")
                if mode is None:
                    mode = by_name["(mode)"] = functions.new_mode(client)
                script = by_name[name] = functions.caller(client, name, mode)
            else:
                script = by_name[name] = register(client, name)
        return script


def register(client: _Registrar, name: str) -> Any:
    """Register script ``name`` on ``client`` (no I/O; the script loads on first use).

    Works for ``redis.Redis``, ``redis.RedisCluster`` and their asyncio twins; the
    returned object is called as ``script(keys=[...], args=[...])``. It holds ``client``
    weakly (see :func:`for_client`): whoever calls it holds the client.
    """
    script = client.register_script(source(name))
    script.registered_client = weakref.proxy(client)
    return script
