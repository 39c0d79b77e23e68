"""Lua assembly: libraries resolved recursively, included once, and errors located."""

from __future__ import annotations

import re
from pathlib import Path
from typing import cast

import pytest
import redis

from redisbreaker import SharedBreaker, TimeWindow, scripts
from redisbreaker.errors import StorageError
from redisbreaker.testing import VirtualClock

LUA = Path(__file__).resolve().parents[2] / "lua"


@pytest.mark.parametrize("path", sorted(LUA.glob("*.lua")), ids=lambda p: p.stem)
def test_every_library_comes_once_before_its_users(path: Path) -> None:
    """Each library is included once, after every library it declares it uses."""
    parts = [p for _, _, p in scripts.compiled(path.stem).parts]
    assert len(parts) == len(set(parts))
    assert parts[-1] == f"lua/{path.name}"
    for i, part in enumerate(parts):
        text = (LUA.parent / part).read_text()
        for dep in re.findall(r"^--! use: *([\w, ]+)$", text, re.M):
            for lib in (d.strip() for d in dep.split(",")):
                assert f"lua/lib/{lib}.lua" in parts[:i], (part, lib)


def test_scripts_use_only_what_they_declare() -> None:
    """A script declares only the libraries it uses directly (theirs come with them):
    transaction scripts the tx library, breaker scripts breaker or outcomes."""
    allowed = {
        "tx_": ("--! use: tx",),
        "breaker_": ("--! use: breaker", "--! use: outcomes"),
        "gate_": ("--! use: breaker",),
        "dlq_": (
            "--! use: clock",
            "-- dlq_remove: take entries out of a dead-letter stream, after a replay or a purge.",
        ),
        "attempt_": ("--! use: clock",),
        "marker": ("--! use: clock",),
    }
    for path in LUA.glob("*.lua"):
        first = path.read_text().splitlines()[0]
        (choices,) = [v for k, v in allowed.items() if path.stem.startswith(k)]
        assert first in choices, path.name


def test_a_lua_error_names_its_source_file_and_line(r: redis.Redis) -> None:
    """A script error reached through the library names the lua/ file and line."""
    clock = VirtualClock()
    b = SharedBreaker("lua-error", client=r, fail_max=None, window=TimeWindow(60),
                      failure_rate_threshold=0.9, minimum_calls=100)  # fmt: skip
    clock.attach(b)
    b.call(print, "t0")
    b.sync()
    clock.advance(50)
    b.call(print, "t0+50")
    b.sync()
    # A time bucket this library did not write: dropping it (at t0+70) cannot parse it.
    bucket_key = b.keys[2]
    member, score = cast(tuple[bytes, float], r.zrange(bucket_key, 0, 0, withscores=True)[0])
    r.zrem(bucket_key, member)
    r.zadd(bucket_key, {"garbage": score})
    clock.advance(20)
    with pytest.raises(StorageError) as info:
        b.snapshot()
    found = re.search(r"\[(lua/(?:lib/)?\w+\.lua):(\d+)\]", str(info.value))
    assert found, str(info.value)
    assert found.group(1) == "lua/lib/breaker.lua"
    line = (LUA.parent / found.group(1)).read_text().splitlines()[int(found.group(2)) - 1]
    assert "tonumber" in line  # the line that reads the bucket's totals
