"""Quick unit checks of the scripts on fakeredis (no server; fresh FakeServer per test)."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from redisbreaker import CircuitOpenError, SharedBreaker, State, StorageError, stored
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


def test_a_server_older_than_6_2_is_refused_on_every_call(
    fake: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's version is read once per client (INFO server, after its first
    reply); a server the library does not support is named in every call's error (a
    breaker call then follows its outage policy), and a supported one is not asked
    again."""
    asked: list[Any] = []
    newer = fakeredis.FakeRedis(server=fakeredis.FakeServer())

    def info_of(client: fakeredis.FakeRedis, version: str | None) -> Any:
        real = client.info

        def info(*args: Any, **kwargs: Any) -> Any:
            asked.append(args)
            return {"redis_version": version} if version else real(*args, **kwargs)

        return info

    monkeypatch.setattr(fake, "info", info_of(fake, "6.0.16"))
    b = SharedBreaker("old-server", client=fake, fail_max=2)
    for _ in range(2):
        with pytest.raises(StorageError, match=r"Redis 6\.0\.16 is not supported.*6\.2"):
            b.snapshot()
    assert asked == [("server",)]

    monkeypatch.setattr(newer, "info", info_of(newer, None))
    fine = SharedBreaker("new-server", client=newer, fail_max=5)
    fail_n(fine.call, 3)
    assert fine.snapshot().consecutive_failures == 3
    assert len(asked) == 2
