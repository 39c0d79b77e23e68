"""Is Redis keeping our data? When it is not, say so loudly.

Breakers, pauses and transactions live only in Redis, and Redis can lose them
without telling anyone: restarted without persistence, flushed, failed over to a
replica that had not caught up, or short of memory under an eviction policy (every
key the library writes carries a TTL, so under a ``volatile-*`` policy they are the
*only* candidates). Open breakers then close and pauses end, silently. Three
detectors make that loud, each logging at ERROR once per event in every process that
sees it:

* **the marker** (``lua/marker.lua``): a hash written once per prefix, with no TTL, so
  only the loss of the whole data set removes it. Each process remembers the token it
  saw; a different one means the data set was lost and made anew. Checked when a
  process first uses a client, by every snapshot, by the Celery gate with each
  heartbeat, and by the fleet view (CLI, metrics, dashboard).
* **generations**: a breaker's generation only ever grows, so a reply with a lower
  one than this process saw means its state was lost (evicted, most often) while it
  was open or paused (:mod:`redisbreaker.breaker_core`); the Celery gate puts back a
  manual pause it was holding.
* **the eviction policy**: :func:`eviction_risk`, read at start where ``CONFIG GET``
  is allowed.

docs/redis.md says how to run Redis so none of this happens.
"""

from __future__ import annotations

import logging
import threading
import uuid
import weakref
from dataclasses import dataclass
from typing import Any

from redisbreaker import scripts
from redisbreaker.breaker_core import origin
from redisbreaker.keys import KeySpace
from redisbreaker.state import text_of

logger = logging.getLogger("redisbreaker")


@dataclass(frozen=True, slots=True)
class DataSet:
    """What the marker says of the data set under a prefix."""

    token: str
    created_ms: int  # when it was made (server clock)
    replaced: str  # the token of the data set it replaced, '' unless one was lost
    created_by: str  # the process that made it
    server_ms: int  # the server's clock when this was read

    @property
    def replaced_a_lost_one(self) -> bool:
        """Whether this data set was made because the one before it was lost."""
        return bool(self.replaced)

    @property
    def lost_at_ms(self) -> int:
        """When the loss was found (server ms; 0: no loss since the marker was made)."""
        return self.created_ms if self.replaced else 0


def parse_marker(reply: Any) -> DataSet:
    token, created, replaced, by, now = reply
    return DataSet(text_of(token), int(created), text_of(replaced), text_of(by), int(now))


class MarkerWatch:
    """One per process, client and prefix: the token it saw, and the losses it found.

    The decision (:meth:`seen`) is plain Python; :meth:`check` and :meth:`acheck` are
    the sync and asyncio shells around one script call.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.key = KeySpace.of(prefix, "data", "marker").key("m")
        self.known: str | None = None
        self.losses = 0  # losses this process found
        self.lost_at_ms = 0  # when the latest loss was found (server ms), 0 if never
        self._lock = threading.Lock()

    def call(self) -> tuple[list[str], list[str]]:
        """KEYS and ARGV of the marker script."""
        return [self.key], ["", uuid.uuid4().hex, self.known or "", origin()]

    def seen(self, data: DataSet) -> bool:
        """Take a reply in; True (and one ERROR) when it shows the data set was lost."""
        with self._lock:
            if data.replaced_a_lost_one:
                self.lost_at_ms = max(self.lost_at_ms, data.lost_at_ms)
            if self.known is None or data.token == self.known:
                self.known = data.token
                return False
            self.known = data.token
            self.losses += 1
            self.lost_at_ms = max(self.lost_at_ms, data.created_ms)
        logger.error(
            "redisbreaker: Redis lost all the data under prefix %r (its marker is gone): "
            "open breakers closed, pauses ended and transactions in flight are unknown. "
            "Redis restarted without persistence, was flushed, or failed over to a replica "
            "that had not caught up; see docs/redis.md for the settings that prevent it",
            self.prefix,
        )  # fmt: skip
        return True

    def check(self, client: Any) -> DataSet:
        """Read (or make) the marker; raises what redis-py raises."""
        keys, args = self.call()
        data = parse_marker(scripts.for_client(client, "marker")(keys=keys, args=args))
        self.seen(data)
        return data

    async def acheck(self, client: Any) -> DataSet:
        keys, args = self.call()
        data = parse_marker(await scripts.for_client(client, "marker")(keys=keys, args=args))
        self.seen(data)
        return data


_watches: weakref.WeakKeyDictionary[Any, dict[str, MarkerWatch]] = weakref.WeakKeyDictionary()
_watches_lock = threading.Lock()


def marker_watch(client: Any, prefix: str) -> MarkerWatch:
    """This process's watch of ``prefix`` on ``client`` (one, shared by every object)."""
    with _watches_lock:
        by_prefix = _watches.setdefault(client, {})
        found = by_prefix.get(prefix)
        if found is None:
            found = by_prefix[prefix] = MarkerWatch(prefix)
        return found


def eviction_risk(client: Any) -> str | None:
    """A warning if Redis may evict the library's keys; ``None`` if it will not, or if
    that cannot be told (managed Redis often refuses ``CONFIG``: said at debug level).

    Eviction needs both a ``maxmemory`` and a policy other than ``noeviction``; the
    library's keys all carry TTLs, so a ``volatile-*`` policy takes them first.
    """
    try:
        reply = client.config_get("maxmemory*")
    except Exception as exc:
        logger.debug("redisbreaker: cannot read maxmemory settings: %r", exc)
        return None
    if not isinstance(reply, dict):
        return None
    found = {text_of(k): text_of(v) for k, v in reply.items()}
    policy = found.get("maxmemory-policy", "noeviction")
    if policy == "noeviction" or found.get("maxmemory", "0") == "0":
        return None
    first = (
        " (they all carry TTLs, so they are the first to go)"
        if policy.startswith("volatile")
        else ""
    )
    return (
        f"redisbreaker: Redis has maxmemory {found.get('maxmemory')} with maxmemory-policy "
        f"{policy!r}: under memory pressure it evicts the library's keys{first}, which "
        "silently closes open breakers and ends pauses. Use 'noeviction' or a Redis of its "
        "own (docs/redis.md)"
    )
