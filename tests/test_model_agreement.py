"""The Lua breaker on a real Redis and the pure-Python model agree, step by step."""

from __future__ import annotations

import itertools
from typing import Any

import hypothesis.strategies as st
import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from redisbreaker import scripts, stored
from redisbreaker.keys import KeySpace
from redisbreaker.model import BreakerModel
from redisbreaker.options import SETTINGS_TEXT, Backoff, BreakerOptions, CountWindow, TimeWindow
from redisbreaker.state import View
from redisbreaker.testing.servers import RedisServer

PRESETS: list[dict[str, Any]] = [
    {"fail_max": 3, "reset_timeout": 5.0},
    {"fail_max": None, "window": CountWindow(8), "minimum_calls": 4, "failure_rate_threshold": 0.5},
    {
        "fail_max": 10,
        "window": TimeWindow(5),
        "minimum_calls": 3,
        "failure_rate_threshold": 0.6,
        "slow_call_duration": 1.0,
        "slow_call_rate_threshold": 0.5,
    },
    {
        "fail_max": 2,
        "reset_timeout": 2.0,
        "backoff": Backoff(multiplier=3.0, max=30.0, jitter=0.5),
        "half_open_permits": 2,
        "success_threshold": 2,
        "trial_lease": 3.0,
    },
    {
        "fail_max": None,
        "window": CountWindow(3),
        "minimum_calls": 1,
        "slow_call_duration": 0.5,
        "slow_call_rate_threshold": 0.34,
        "failure_rate_threshold": 1.0,
    },
    # Windows that rarely trip, so the ring wraps (pending successes across its end) and
    # time buckets fall out one by one until the window is empty.
    {"fail_max": None, "window": CountWindow(5), "minimum_calls": 5, "failure_rate_threshold": 1.0},
    {"fail_max": None, "window": TimeWindow(3), "minimum_calls": 9, "failure_rate_threshold": 1.0},
    # Buckets that live across several advances, so some fall out and some stay.
    {"fail_max": None, "window": TimeWindow(60), "minimum_calls": 6, "failure_rate_threshold": 0.8},
]

# Mostly no pending successes: they reset the failure streak, and trips must happen.
PENDING = st.sampled_from([0, 0, 0, 0, 1, 3])
STALE = st.sampled_from([False, False, False, True])
_names = itertools.count()
_server: RedisServer | None = None


def _flat(batch: list[tuple[int, str, int, str]]) -> list[Any]:
    return [x for run in batch for x in run]


def _client() -> redis.Redis:
    global _server
    if _server is None:
        try:
            _server = RedisServer().start()
        except Exception as exc:  # the test must fail, not skip
            pytest.fail(f"could not start redis-server: {exc}")
    return _server.client()


class LuaVersusModel(RuleBasedStateMachine):
    """Drive both with one random sequence; compare the full reply after every step."""

    @initialize(preset=st.sampled_from(PRESETS), start=st.integers(10**12, 2 * 10**12))
    def setup(self, preset: dict[str, Any], start: int) -> None:
        self.r = _client()
        self.options = BreakerOptions(**preset)
        keys = KeySpace.of("rbtest:", "cb", f"m{next(_names)}")
        self.keys = [keys.key("s"), keys.key("p"), keys.key("b"), keys.key("r")]
        self.script = {
            n: self.make_script(n)
            for n in (
                "breaker_admit", "breaker_report", "breaker_flush", "breaker_operate",
                "breaker_snapshot",
            )
        }  # fmt: skip
        other = KeySpace.of("rbtest:", "cb", f"bystander{next(_names)}")
        self.bystander = [other.key("s"), other.key("p"), other.key("b"), other.key("r")]
        self.model = BreakerModel()
        self.now = start
        self.gen = 0
        self.tokens: list[str] = []
        self.counter = itertools.count()

    def make_script(self, name: str) -> Any:
        """The EVALSHA path (Redis 6.2, fakeredis): the script run as itself."""
        return scripts.register(self.r, name)

    def argv(self, rand: float = 0.25, note: str = "", refresh: bool = True) -> list[Any]:
        # refresh=False is most calls of a real process, and lets a recorded outcome
        # take the scripts' fast path (lua/lib/outcomes.lua closed_tally).
        return self.options.argv(
            clock=str(self.now), rand=rand, channel="rbtest:events",
            event_prefix=b"\x96\xa1n\xa1o", who="host:1", note=note, refresh_ttl=refresh,
        )  # fmt: skip

    def compare(self, lua_reply: list[Any], model_view: View) -> None:
        lua_view = View.parse(lua_reply)
        assert lua_view == model_view
        self.gen = lua_view.generation

    @rule(pending=PENDING, stale=STALE, rand=st.floats(0, 0.999))
    def admit(self, pending: int, stale: bool, rand: float) -> None:
        token = f"t{next(self.counter)}"
        pgen = self.gen - 1 if stale else self.gen
        batch = [(pgen, "0", pending, "")] if pending else []
        args = [*self.argv(rand), token, *_flat(batch)]
        reply = self.script["breaker_admit"](keys=self.keys, args=args)
        view = self.model.admit(self.argv(rand), self.now, token, batch)
        self.compare(reply, view)
        if view.verdict.value == "trial":
            self.tokens.append(token)

    @rule(
        code=st.sampled_from("0112131x1"),
        pending=PENDING,
        stale=STALE,
        use_token=st.booleans(),
        rand=st.floats(0, 0.999),
        refused=st.sampled_from([0, 0, 2]),
        note=st.sampled_from(["", "ValueError: payments down"]),
        refresh=st.booleans(),
    )
    def record(
        self, code: str, pending: int, stale: bool, use_token: bool, rand: float, refused: int,
        note: str, refresh: bool,
    ) -> None:  # fmt: skip
        token = self.tokens.pop(0) if use_token and self.tokens else ""
        gen = self.gen - 1 if stale else self.gen
        # A process's queue: successes that completed first, calls refused while it was
        # open, then this outcome.
        batch = [(self.gen, "0", pending, "")] if pending else []
        if refused:
            batch.append((self.gen, "n", refused, ""))
        batch.append((gen, code, 1, token))
        args = [*self.argv(rand, note, refresh), *_flat(batch)]
        reply = self.script["breaker_report"](keys=self.keys, args=args)
        view = self.model.report(self.argv(rand, note, refresh), self.now, batch)
        self.compare(reply, view)

    @rule(pending=PENDING, stale=STALE, refused=st.sampled_from([0, 0, 2]), refresh=st.booleans())
    def background_sync(self, pending: int, stale: bool, refused: int, refresh: bool) -> None:
        """A background sync (redisbreaker/syncer.py): breaker_flush with this breaker
        between two others' syncs is, for this breaker, breaker_report."""
        batch = [(self.gen - 1 if stale else self.gen, "0", pending, "")] if pending else []
        if refused:
            batch.append((self.gen, "n", refused, ""))
        mine = [*self.argv(refresh=refresh), *_flat(batch)]
        theirs = [*self.argv(refresh=refresh), *_flat([(0, "0", 2, "")])]
        keys = [*self.bystander, *self.keys, *self.bystander]
        args = [3, len(theirs), *theirs, len(mine), *mine, len(theirs), *theirs]
        replies = self.script["breaker_flush"](keys=keys, args=args)
        assert len(replies) == 3
        self.compare(replies[1], self.model.report(self.argv(refresh=refresh), self.now, batch))

    @rule(ms=st.sampled_from([1, 400, 999, 1000, 2500, 5000, 7000, 31000, 120000]))
    def advance(self, ms: int) -> None:
        self.now += ms

    # Steps sized to a time window, so buckets fall out some at a time, not all at once.
    @precondition(lambda self: isinstance(self.options.window, TimeWindow))
    @rule(share=st.sampled_from([0.3, 0.5, 0.7, 0.99]))
    def advance_in_window(self, share: float) -> None:
        window = self.options.window
        assert isinstance(window, TimeWindow)
        self.now += int(share * window.seconds * 1000)

    # Operator commands are drawn rarely, so that most sequences trip on their own.
    @rule(
        cmd=st.sampled_from(["force_open", "disable", "reset", "open", *["none"] * 12]),
        seconds=st.integers(1, 10),
    )
    def operate(self, cmd: str, seconds: int) -> None:
        if cmd == "none":
            return
        argv = self.argv(note="deploy freeze" if seconds % 2 else "")
        reply = self.script["breaker_operate"](keys=self.keys, args=[*argv, cmd, seconds * 1000])
        self.compare(reply, self.model.operate(argv, self.now, cmd, seconds * 1000))

    @precondition(lambda self: hasattr(self, "r"))
    @invariant()
    def snapshots_agree(self) -> None:
        reply = self.script["breaker_snapshot"](keys=self.keys, args=self.argv())
        self.compare(reply, self.model.snapshot(self.argv(), self.now))

    @precondition(lambda self: hasattr(self, "r"))
    @invariant()
    def windows_agree(self) -> None:
        """The stored ring, buckets and window fields are the model's, byte for byte."""
        s_key, _, b_key, r_key = self.keys
        m = self.model
        assert (self.r.get(r_key) or b"") == bytes(m.ring)
        buckets = [
            (f"{sec}:{t}:{f}:{w}".encode(), float(sec)) for sec, (t, f, w) in m.buckets.items()
        ]
        assert self.r.zrange(b_key, 0, -1, withscores=True) == buckets
        raw = self.r.get(s_key)
        if isinstance(raw, bytes):
            s = stored.decode(raw)
            assert [s["h"], s["ct"], s["cf"], s["cs"], s["wsec"]] == [m.h, m.ct, m.cf, m.cs, m.wsec]


class FunctionsVersusModel(LuaVersusModel):
    """The same, on the FCALL path (Redis 7+): the library loaded once, the settings
    sent as text only until Redis knows them."""

    def make_script(self, name: str) -> Any:
        return scripts.for_client(self.r, name)


for machine in (LuaVersusModel, FunctionsVersusModel):
    machine.TestCase.settings = settings(
        max_examples=120,
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
test_lua_and_model_agree = LuaVersusModel.TestCase
test_lua_functions_and_model_agree = FunctionsVersusModel.TestCase


def test_the_functions_path_is_the_one_taken() -> None:
    """On Redis 7 the breaker's calls are FCALLs, and the settings text is sent only
    until Redis has it: the second call's arguments leave it out."""
    r = _client()
    before = r.info("commandstats").get("cmdstat_fcall", {}).get("calls", 0)
    report = scripts.for_client(r, "breaker_report")
    options = BreakerOptions(fail_max=3)
    keys = KeySpace.of("rbtest:", "cb", "fcall-path")
    key_list = [keys.key("s"), keys.key("p"), keys.key("b"), keys.key("r")]
    argv = options.argv(clock="", rand=0.5, channel="rbtest:events", event_prefix=b"\x96")
    report(keys=key_list, args=argv)
    assert report.fcall_args(key_list, argv)[2 + 4 + SETTINGS_TEXT] == ""  # known now
    report(keys=key_list, args=argv)
    assert r.info("commandstats")["cmdstat_fcall"]["calls"] >= before + 2


def teardown_module() -> None:
    if _server is not None:
        _server.stop()
