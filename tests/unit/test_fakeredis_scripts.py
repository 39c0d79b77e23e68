"""Quick unit checks of the scripts on fakeredis (no server; fresh FakeServer per test)."""

from __future__ import annotations

import fakeredis
import pytest

from redisbreaker import CircuitOpenError, SharedBreaker, State, stored
from tests.helpers import fail_n, ok


@pytest.fixture
def fake() -> fakeredis.FakeRedis:
    # A fresh server each time: one script that sets a global breaks fakeredis's Lua runtime.
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


def test_trip_and_refuse_on_fakeredis(fake: fakeredis.FakeRedis) -> None:
    """The scripts need nothing Redis-only (no cmsgpack): they run on fakeredis too."""
    b = SharedBreaker("fake", client=fake, fail_max=2, reset_timeout=30)
    fail_n(b.call, 2)
    with pytest.raises(CircuitOpenError):
        b.call(ok)
    assert b.snapshot().state is State.OPEN


def test_the_state_written_without_struct_is_the_same_layout(fake: fakeredis.FakeRedis) -> None:
    """fakeredis has no Lua `struct`: lua/lib/codec.lua packs the state by hand there,
    into the bytes redisbreaker.stored (and real Redis's `struct`) read and write."""
    b = SharedBreaker("fake-layout", client=fake, fail_max=2, reset_timeout=30)
    fail_n(b.call, 2)
    raw = fake.get(b.keys[0])
    assert isinstance(raw, bytes)
    s = stored.decode(raw)
    assert (s["st"], s["n_fail"], s["why"]) == ("open", 2, "consecutive")
    assert s["why_err"].startswith("Boom") and s["cfg"] == b.core.options.settings_text
    assert stored.encode(s) == raw
    snap = b.snapshot()  # read back by the hand-made decoder
    assert snap.reason is not None and snap.reason.rule == "consecutive"
