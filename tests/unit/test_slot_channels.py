"""Channel naming for sharded pub/sub (keys.py) and the publish rule (lua/lib/publish.lua)."""

from __future__ import annotations

import fakeredis
import pytest
from redis.crc import key_slot

from redisbreaker.keys import (
    SLOTS,
    KeySpace,
    prefix_channels,
    slot_channel,
    slot_tag,
    tag_slot,
)
from redisbreaker.scripts import source


def test_every_slot_has_a_channel_in_it() -> None:
    """slot_tag inverts CRC16 for all 16,384 slots, with brace-free 4-character tags."""
    for slot in range(SLOTS):
        tag = slot_tag(slot)
        assert len(tag) == 4 and "{" not in tag and "}" not in tag
        assert key_slot(slot_channel("rb:", "cb", slot).encode()) == slot
    with pytest.raises(ValueError, match="out of range"):
        slot_tag(SLOTS)


@pytest.mark.parametrize("name", ["payments", "a{b}c", "}{", b"\x00{\xff", "é" * 300])
def test_an_objects_channel_shares_its_keys_slot(name: str | bytes) -> None:
    """Inside a script, SPUBLISH goes to the slot of the script's own keys."""
    ks = KeySpace.of("rb:", "cb", name)
    assert key_slot(ks.channel(sharded=True).encode()) == key_slot(ks.key("s").encode())
    assert tag_slot(ks.tag) == key_slot(ks.key("s").encode())
    assert ks.channel() == "rb:cb:events"


def test_prefix_channels_cover_every_slot_once() -> None:
    """A watcher's channels: one per prefix on one server, one per slot on a Cluster."""
    assert prefix_channels("x:", "tx", sharded=False) == ["x:tx:events"]
    sharded = prefix_channels("x:", "tx", sharded=True)
    assert sorted(key_slot(c.encode()) for c in sharded) == list(range(SLOTS))


def _publish_cmd(client: fakeredis.FakeRedis, channel: str) -> str:
    lib = source("breaker_snapshot").split("local function publish_refused")[0]
    lib = lib[lib.index("local sharded_pubsub") :]
    reply = client.eval(lib + "\nreturn publish_cmd(ARGV[1])", 0, channel)
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def test_fakeredis_publishes_with_publish() -> None:
    """fakeredis has no REDIS_VERSION_NUM: PUBLISH, even on a hash-tagged channel (it is
    a single server; the client never names slot channels for it anyway)."""
    fake = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    assert _publish_cmd(fake, "rb:cb:events") == "PUBLISH"
    assert _publish_cmd(fake, slot_channel("rb:", "cb", 7)) == "PUBLISH"
