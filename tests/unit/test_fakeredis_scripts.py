"""Quick unit checks of the scripts on fakeredis (no server; fresh FakeServer per test)."""

from __future__ import annotations

import fakeredis
import pytest

from redisbreaker import CircuitOpenError, SharedBreaker, State
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
