"""The stored layout as Python reads it (redisbreaker/stored.py) matches the scripts'
(lua/lib/codec.lua), and a reply parses each number into its own field."""

from __future__ import annotations

import re
from pathlib import Path

from redisbreaker import stored
from redisbreaker.state import State, View

CODEC = Path(__file__).resolve().parents[2] / "lua" / "lib" / "codec.lua"


def lua_list(name: str) -> list[str]:
    text = CODEC.read_text()
    body = re.search(rf"local {name} = \{{(.*?)\}}", text, re.S)
    assert body, name
    return re.findall(r"'(\w+)'", body.group(1))


def test_numbers_and_strings_in_the_scripts_order() -> None:
    assert lua_list("NUMS") == list(stored.NUMBERS)
    assert lua_list("STRS") == list(stored.STRINGS)


def test_the_fast_path_rewrites_the_first_numbers() -> None:
    # closed_tally() reads and rewrites the first HOT numbers only.
    hot = int(re.search(r"local HOT = (\d+)", CODEC.read_text()).group(1))  # type: ignore[union-attr]
    assert stored.NUMBERS[:hot] == (
        "gen", "consec", "n_ok", "n_fail", "n_slow", "n_ign", "n_np", "wkind", "wsize",
    )  # fmt: skip


def test_a_reply_parses_every_number_into_its_field() -> None:
    state = stored.fresh()
    for i, name in enumerate(stored.NUMBERS):
        state[name] = 100 + i
    state["st"] = "half_open"
    view = View.parse([stored.encode(state), 7, b"", b"", b"", b""])
    at = {name: 100 + i for i, name in enumerate(stored.NUMBERS)}
    assert view.state is State.HALF_OPEN
    assert (view.generation, view.wait_ms) == (at["gen"], 7)
    assert view.consecutive_failures == at["consec"]
    assert (view.calls, view.failures, view.slow_calls) == (at["n"], at["wf"], at["ws"])
    assert (view.half_open_successes, view.trips) == (at["hs"], at["trips"])
    t = view.totals
    assert (t.successful, t.failed, t.slow, t.ignored, t.not_permitted) == (
        at["n_ok"], at["n_fail"], at["n_slow"], at["n_ign"], at["n_np"],
    )  # fmt: skip
    assert (t.trips, t.open_ms) == (at["n_trips"], at["open_ms"])
    assert stored.decode(stored.encode(state)) == state


def test_a_reply_of_the_state_alone() -> None:
    """A recorded outcome with nothing else to say replies with the stored state only."""
    state = stored.fresh()
    state.update(gen=4, consec=2, n_fail=9)
    view = View.parse(stored.encode(state))
    assert (view.state, view.generation, view.consecutive_failures) == (State.CLOSED, 4, 2)
    assert (view.wait_ms, view.transitioned_from, view.other_settings) == (0, None, "")
    assert view.totals.failed == 9
