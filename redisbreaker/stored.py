"""A breaker's stored state, as ``lua/lib/codec.lua`` writes it (layout 3), in Python.

The scripts read and write the state; Python reads it directly only where one script
call per breaker would be wasteful (the operator listing reads every breaker of a
prefix in one pipeline) and in tests. :func:`encode` exists for tests and benchmarks
that need a state without running a breaker.

A state hash of the layout before 3 (one field per number) is still read here, so a
listing made during a rolling upgrade shows breakers no new process has touched yet.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

LAYOUT = 3
STATES = ("closed", "open", "half_open", "forced_open", "disabled")
# In the scripts' order: the numbers a recorded outcome of a closed breaker changes come
# first (the scripts' fast path rewrites only those bytes).
NUMBERS = (
    "gen", "consec", "n_ok", "n_fail", "n_slow", "n_ign", "n_np", "wkind", "wsize",
    "until", "trips", "hs", "n", "wf", "ws", "h", "wsec", "ct", "cf", "cs", "n_trips",
    "open_ms", "opened", "why_at",
)  # fmt: skip
STRINGS = ("cfg", "why", "why_text", "why_err", "why_by")
HEAD = struct.Struct(">BB" + "Q" * len(NUMBERS))  # the layout byte, the state's, NUMBERS
_LEN = struct.Struct(">I")

# The fields a hash of the layout before 3 holds (read by :func:`from_legacy`).
LEGACY_FIELDS = (
    "st", "gen", "until", "trips", "consec", "hs", "n", "wf", "ws", "h", "wsec", "ct", "cf",
    "cs", "n_ok", "n_fail", "n_slow", "n_ign", "n_np", "n_trips", "open_ms", "opened",
    "why_at", *STRINGS,
)  # fmt: skip


class NotAState(ValueError):
    """Bytes that are not a breaker state of this layout."""


def fresh() -> dict[str, Any]:
    """The fields of a breaker that has no state yet."""
    state: dict[str, Any] = dict.fromkeys(NUMBERS, 0)
    state.update(dict.fromkeys(STRINGS, ""), st="closed")
    return state


def decode(raw: bytes) -> dict[str, Any]:
    """The fields of a stored state; raises :class:`NotAState` for anything else. As
    in the scripts, strings that do not parse are read as empty (the numbers decide)."""
    short = len(raw) < HEAD.size + _LEN.size * len(STRINGS)
    if short or raw[0] != LAYOUT or not 1 <= raw[1] <= len(STATES):
        raise NotAState(f"{len(raw)} bytes that are not a breaker state of layout {LAYOUT}")
    head = HEAD.unpack_from(raw)
    state: dict[str, Any] = dict(zip(NUMBERS, head[2:], strict=True))
    state["st"] = STATES[raw[1] - 1]
    at, texts = HEAD.size, []
    for _ in STRINGS:
        if at + _LEN.size > len(raw):
            break
        (length,) = _LEN.unpack_from(raw, at)
        at += _LEN.size
        if at + length > len(raw):
            break
        texts.append(raw[at : at + length].decode("utf-8", "replace"))
        at += length
    if len(texts) != len(STRINGS) or at != len(raw):
        texts = [""] * len(STRINGS)
    state.update(zip(STRINGS, texts, strict=True))
    return state


def encode(state: Mapping[str, Any]) -> bytes:
    """The stored form of ``state`` (every field of :func:`fresh`)."""
    numbers = [state[name] for name in NUMBERS]
    out = [HEAD.pack(LAYOUT, STATES.index(state["st"]) + 1, *numbers)]
    for name in STRINGS:
        text = state[name].encode("utf-8")
        out += [_LEN.pack(len(text)), text]
    return b"".join(out)


def from_legacy(row: Sequence[Any]) -> dict[str, Any]:
    """The fields of a hash of the layout before 3, from ``HMGET`` of LEGACY_FIELDS."""
    state = fresh()
    for name, value in zip(LEGACY_FIELDS, row, strict=True):
        if value is None:
            continue
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        if name in STRINGS or name == "st":
            state[name] = text
        else:
            try:
                state[name] = int(float(text))
            except ValueError:
                state[name] = 0
    return state
