"""Key naming: every key of one breaker or transaction shares one Redis Cluster hash tag.

Redis Cluster hashes only the part of a key between the first ``{`` and the next
``}``. A user's name may contain braces or any other byte, so the tag is an escaped
form of the name that never contains ``{`` or ``}``; the escaping is injective, so two
names never share keys.

Pub/sub channels: on one server (standalone, Sentinel, fakeredis) each prefix and kind
has one channel (``rb:cb:events``). On Redis Cluster a PUBLISH is broadcast to every
node, so there each hash slot has its own channel, hash-tagged into that slot
(``rb:cb{DLH@}:events``): a script publishes with SPUBLISH (Redis 7+) on the channel of
its own keys' slot, and only the nodes of that slot's shard carry the message. One
channel per slot rather than per object, so that a watcher (``redisbreaker watch``,
the dashboard) can hear every object of a prefix with a fixed set of subscriptions.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

from redisbreaker.errors import ConfigurationError

DEFAULT_PREFIX = "rb:"
# The name of the breakers that stand for manual pauses (``<this>|<scope>=<key>``); no
# Celery task can be called this, as task names never contain "|".
MANUAL_PAUSE = "redisbreaker.pause"

# Bytes kept as they are inside a tag; everything else is %XX-escaped.
_SAFE = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/@+=,;!~*()[]<>|^$#&?"
)


# The longest name, in bytes of its UTF-8 form (escaping can make the key 3x longer).
MAX_NAME_BYTES = 1024


def escape_tag(name: str | bytes) -> str:
    """Return the hash-tag body for ``name``: printable, brace-free and injective."""
    raw = name.encode("utf-8") if isinstance(name, str) else bytes(name)
    return "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in raw)


def validate_name(kind: str, name: object) -> str | bytes:
    """Check a breaker's or transaction's name; return it unchanged."""
    if not isinstance(name, str | bytes):
        raise ConfigurationError(f"{kind} name must be str or bytes, got {name!r}")
    if isinstance(name, str):
        try:
            raw = name.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ConfigurationError(
                f"{kind} name {name[:100]!r} is not valid Unicode text ({exc.reason} at "
                f"position {exc.start}); pass bytes for binary names"
            ) from None
    else:
        raw = name
    if len(raw) == 0:
        raise ConfigurationError(f"{kind} name must not be empty")
    if len(raw) > MAX_NAME_BYTES:
        raise ConfigurationError(
            f"{kind} name is {len(raw)} bytes long in UTF-8; the limit is {MAX_NAME_BYTES}"
        )
    return name


def validate_prefix(prefix: object) -> str:
    """A prefix must not contain braces: Redis would take its braces as the hash tag."""
    if not isinstance(prefix, str):
        raise ConfigurationError(f"key prefix must be a str, got {prefix!r}")
    if "{" in prefix or "}" in prefix:
        raise ConfigurationError(
            f"key prefix {prefix!r} contains a brace; braces would override the hash tag"
        )
    return prefix


@dataclass(frozen=True, slots=True)
class KeySpace:
    """The keys of one named object: ``<prefix><kind>{<escaped name>}:<part>``."""

    prefix: str
    kind: str
    tag: str

    @classmethod
    def of(cls, prefix: str, kind: str, name: str | bytes) -> KeySpace:
        return cls(validate_prefix(prefix), kind, escape_tag(validate_name(kind, name)))

    def key(self, part: str) -> str:
        return f"{self.prefix}{self.kind}{{{self.tag}}}:{part}"

    def channel(self, *, sharded: bool = False) -> str:
        """The pub/sub channel of this object's events: one per prefix and kind, or with
        ``sharded`` (a Redis Cluster client) the one of its hash slot."""
        if not sharded:
            return f"{self.prefix}{self.kind}:events"
        return slot_channel(self.prefix, self.kind, tag_slot(self.tag))


# -- one channel per hash slot ----------------------------------------------------------

SLOTS = 16384
_TAG_WIDTH = 4  # characters of a slot tag; each carries 4 free bits (16 >= 14 needed)


def tag_slot(tag: str) -> int:
    """The Redis Cluster hash slot of every key whose hash tag is ``tag`` (CRC16 mod
    16384; a tag is ASCII by construction, see :func:`escape_tag`)."""
    return binascii.crc_hqx(tag.encode("ascii"), 0) % SLOTS


def _slot_basis() -> tuple[int, list[tuple[int, int, int]]]:
    """Solve, once, which tags reach which slots.

    A slot tag is ``_TAG_WIDTH`` characters ``0x40 | n`` (``@A..O``, brace-free), each
    ``n`` 4 bits. CRC16 with a zero start is linear over GF(2) for inputs of one length,
    so ``slot(tag) = slot(@@@@) XOR`` the slots of the bits set in the ``n``s. Gaussian
    elimination over those 16 bit vectors gives, per pivot bit of a slot number, the
    bits to set: any slot's tag is then found in 14 steps, with no search or table.
    """
    base = tag_slot("@" * _TAG_WIDTH)
    basis: list[tuple[int, int, int]] = []  # (pivot bit, slot vector, tag bits)
    for bit in range(4 * _TAG_WIDTH):
        chars = [0x40] * _TAG_WIDTH
        chars[bit // 4] |= 1 << (bit % 4)
        vector, label = tag_slot(bytes(chars).decode("ascii")) ^ base, 1 << bit
        for pivot, v, lab in basis:
            if vector >> pivot & 1:
                vector, label = vector ^ v, label ^ lab
        if vector:
            basis.append((vector.bit_length() - 1, vector, label))
            basis.sort(reverse=True)
    if len(basis) != SLOTS.bit_length() - 1:  # never: checked for every slot in the tests
        raise RuntimeError("slot tags cannot reach every slot")
    return base, basis


_SLOT_BASE, _SLOT_BASIS = _slot_basis()


def slot_tag(slot: int) -> str:
    """A short hash tag whose keys and channels fall in ``slot`` (``tag_slot`` inverted)."""
    if not 0 <= slot < SLOTS:
        raise ValueError(f"slot {slot} is out of range")
    target, bits = slot ^ _SLOT_BASE, 0
    for pivot, vector, label in _SLOT_BASIS:
        if target >> pivot & 1:
            target, bits = target ^ vector, bits ^ label
    return "".join(chr(0x40 | (bits >> (4 * i) & 0xF)) for i in range(_TAG_WIDTH))


def slot_channel(prefix: str, kind: str, slot: int) -> str:
    """The channel of ``kind`` events of the objects in hash ``slot`` (Redis Cluster)."""
    return f"{prefix}{kind}{{{slot_tag(slot)}}}:events"


def prefix_channels(prefix: str, kind: str, *, sharded: bool) -> list[str]:
    """Every channel ``kind`` events of ``prefix`` are published on: one, or one per slot."""
    if not sharded:
        return [f"{prefix}{kind}:events"]
    return [slot_channel(prefix, kind, slot) for slot in range(SLOTS)]
