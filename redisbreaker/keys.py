"""Key naming: every key of one breaker or transaction shares one Redis Cluster hash tag.

Redis Cluster hashes only the part of a key between the first ``{`` and the next
``}``. A user's name may contain braces or any other byte, so the tag is an escaped
form of the name that never contains ``{`` or ``}``; the escaping is injective, so two
names never share keys.
"""

from __future__ import annotations

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

    def channel(self) -> str:
        """The pub/sub channel this kind publishes its events on (one per prefix)."""
        return f"{self.prefix}{self.kind}:events"
