"""The whole fleet as operators see it: every breaker, worker and transaction in Redis.

Discovery scans the keys under a prefix (on Redis Cluster, every primary) and reads
each state hash in one pipelined round trip per node, so listing 10,000 breakers takes
a fraction of a second and needs no registry that could drift. Operator commands go
through the breaker's own script, with the settings stored with its state, so an
operator never overrules the settings the fleet uses.

Names are shown as users know them: a Celery task's breaker ``fleet.render`` of scope
``worker`` on ``celery@gpu1`` is ``fleet.render`` with ``scope="worker"`` and
``scope_key="celery@gpu1"``; a manual pause is ``pause`` of its scope.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import msgpack
import redis

from redisbreaker import stored
from redisbreaker.breaker import SharedBreaker
from redisbreaker.durability import DataSet, MarkerWatch, parse_marker
from redisbreaker.errors import STORAGE_ERRORS, ConfigurationError, StorageError
from redisbreaker.keys import MANUAL_PAUSE, KeySpace, escape_tag
from redisbreaker.options import BreakerOptions, options_from_stored
from redisbreaker.outage import diagnose
from redisbreaker.state import Reason, State, Totals, text_of
from redisbreaker.transaction import Transaction
from redisbreaker.tx_core import Decision

# Manual pauses (breakers named MANUAL_PAUSE) are shown under this name.
PAUSE = "pause"
_GLOB = re.compile(r"([*?\[\]\\])")


class UnknownBreakerError(ConfigurationError, LookupError):
    """No breaker of that name (and scope) has state in Redis."""


def unescape_tag(tag: str) -> str | bytes:
    """The name :func:`~redisbreaker.keys.escape_tag` made ``tag`` from (``bytes`` if it
    is not UTF-8)."""
    raw = re.sub(rb"%([0-9A-F]{2})", lambda m: bytes([int(m.group(1), 16)]), tag.encode())
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def split_name(name: str | bytes) -> tuple[str, str, str]:
    """(shown name, scope, scope key) of a stored breaker name: ``task|worker=w`` is
    (``task``, ``worker``, ``w``); a manual pause is shown as ``pause``."""
    text = name if isinstance(name, str) else name.decode("utf-8", "backslashreplace")
    base, sep, rest = text.partition("|")
    scope, _, key = rest.partition("=") if sep else ("cluster", "", "")
    return (PAUSE if base == MANUAL_PAUSE else base), scope, key


def join_name(name: str, scope: str = "cluster", key: str = "") -> str:
    """The stored name of breaker ``name`` in ``scope`` (the inverse of :func:`split_name`)."""
    base = MANUAL_PAUSE if name == PAUSE else name
    return base if scope == "cluster" else f"{base}|{scope}={key}"


@dataclass(frozen=True)
class BreakerInfo:
    """One breaker, as ``redisbreaker ls`` shows it."""

    name: str
    scope: str
    scope_key: str
    state: State
    retry_after: float  # seconds until a trial may run (0.0 unless open)
    consecutive_failures: int
    calls: int  # in the current window
    failures: int
    slow_calls: int
    trips: int  # since it last closed
    totals: Totals
    reason: Reason
    settings: str  # the settings text stored with the state (options.settings_text)
    stored_name: str | bytes = field(repr=False, default="")

    @property
    def failure_rate(self) -> float:
        return self.failures / self.calls if self.calls else 0.0

    @property
    def slow_call_rate(self) -> float:
        return self.slow_calls / self.calls if self.calls else 0.0

    @property
    def label(self) -> str:
        """The name with its scope, for one line of text."""
        return (
            self.name if self.scope == "cluster" else f"{self.name} [{self.scope} {self.scope_key}]"
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON: the fields, rates and the reason's text as ``reason``."""
        out = asdict(self)
        out.pop("stored_name")
        out["state"] = self.state.value
        out["failure_rate"] = self.failure_rate
        out["slow_call_rate"] = self.slow_call_rate
        out["reason_detail"] = out.pop("reason")
        out["reason"] = self.reason.text
        return out


@dataclass(frozen=True)
class WorkerStatus:
    """One Celery worker's gate, from its heartbeat (written every poll interval)."""

    worker: str
    host: str
    pid: int
    queues: list[str]
    paused: dict[str, dict[str, Any]]  # queue -> {"since_ms", "by", "mode"}
    at_ms: int  # server time of the heartbeat

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DeadLetterQueue:
    """One queue's dead letters: waiting now, and what entered and left the store."""

    queue: str
    entries: int
    added: int
    dropped: int  # by the cap
    replayed: int
    purged: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TransactionInfo:
    """One transaction, as ``redisbreaker tx ls`` shows it."""

    tx_id: str
    outcome: str
    participants: int
    yes: int
    no: int
    acked: int
    deadline_ms: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_STATES = frozenset(s.value for s in State)


def _wrong_type(reply: Any) -> bool:
    return isinstance(reply, redis.ResponseError) and str(reply).startswith("WRONGTYPE")


def _int(value: Any) -> int:
    try:
        return int(float(text_of(value)))
    except (TypeError, ValueError):
        return 0


class Fleet:
    """What is in one Redis under one prefix: breakers, workers, transactions."""

    def __init__(self, client: Any, prefix: str = "rb:") -> None:
        self.client = client
        self.prefix = prefix

    # -- reading -----------------------------------------------------------------------

    def scan(self, pattern: str) -> Iterator[str]:
        """Keys matching ``<prefix><pattern>`` (a SCAN glob), on every primary."""
        match = _GLOB.sub(r"\\\1", self.prefix) + pattern
        try:
            if isinstance(self.client, redis.cluster.RedisCluster):
                keys = self.client.scan_iter(
                    match=match, count=1000, target_nodes=redis.cluster.RedisCluster.PRIMARIES
                )
            else:
                keys = self.client.scan_iter(match=match, count=1000)
            for key in keys:
                yield text_of(key)
        except STORAGE_ERRORS as exc:
            raise StorageError(f"listing {self.prefix!r}: {diagnose(exc)}") from exc

    def _read(self, keys: Sequence[str], fields: Sequence[str]) -> list[list[Any]]:
        """HMGET ``fields`` of every key, pipelined (per node on a cluster)."""
        try:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.hmget(key, *fields)
            rows: list[list[Any]] = pipe.execute()
            return rows
        except STORAGE_ERRORS as exc:
            raise StorageError(f"reading {self.prefix!r}: {diagnose(exc)}") from exc

    def _states(self, keys: Sequence[str]) -> list[dict[str, Any] | None]:
        """The stored state of every key (``None``: no key, or not a breaker state),
        in one pipeline (per node on a cluster). A hash of the layout before 3 (a
        breaker no process of this version has touched yet) is read field by field."""
        try:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.get(key)
            raws: list[Any] = pipe.execute(raise_on_error=False)
            legacy = [key for key, raw in zip(keys, raws, strict=True) if _wrong_type(raw)]
            pipe = self.client.pipeline(transaction=False)
            for key in legacy:
                pipe.hmget(key, *stored.LEGACY_FIELDS)
            rows = iter(pipe.execute(raise_on_error=False) if legacy else [])
        except STORAGE_ERRORS as exc:
            raise StorageError(f"reading {self.prefix!r}: {diagnose(exc)}") from exc
        out: list[dict[str, Any] | None] = []
        for raw in raws:
            if _wrong_type(raw):  # a hash of the old layout, or a key of another type
                row = next(rows)
                out.append(None if isinstance(row, Exception) else stored.from_legacy(row))
            elif isinstance(raw, bytes):
                try:
                    out.append(stored.decode(raw))
                except stored.NotAState:
                    out.append(None)
            else:
                out.append(None)
        return out

    def server_ms(self) -> int:
        try:
            seconds, micros = self.client.time()
        except STORAGE_ERRORS as exc:
            raise StorageError(f"reading the server clock: {diagnose(exc)}") from exc
        return int(seconds) * 1000 + int(micros) // 1000

    def data_set(self) -> DataSet | None:
        """What the prefix's marker says (redisbreaker/durability.py): when the data set
        was made, and whether it replaced one Redis lost. ``None`` if there is no marker
        (nothing used the prefix yet, or it was lost and no process has looked since)."""
        key = MarkerWatch(self.prefix).key
        try:
            row = self.client.hmget(key, "token", "created", "replaced", "by")
        except STORAGE_ERRORS as exc:
            raise StorageError(f"reading {key!r}: {diagnose(exc)}") from exc
        if row[0] is None:
            return None
        return parse_marker([*row, self.server_ms()])

    def breakers(self) -> list[BreakerInfo]:
        """Every breaker with state under the prefix, sorted by name."""
        head, tail = f"{self.prefix}cb{{", "}:s"
        keys = [k for k in self.scan("cb{*}:s") if k.startswith(head) and k.endswith(tail)]
        now = self.server_ms()
        found = [
            self._info(unescape_tag(key[len(head) : -len(tail)]), state, now)
            for key, state in zip(keys, self._states(keys), strict=True)
            if state is not None
        ]
        return sorted(found, key=lambda b: (b.name, b.scope, b.scope_key))

    def _info(self, stored_name: str | bytes, v: dict[str, Any], now: int) -> BreakerInfo:
        state = State(v["st"]) if v["st"] in _STATES else State.CLOSED
        until = _int(v["until"])
        open_ms = _int(v["open_ms"])
        if state in (State.OPEN, State.FORCED_OPEN) and v["opened"]:
            open_ms += max(0, now - _int(v["opened"]))
        name, scope, key = split_name(stored_name)
        return BreakerInfo(
            name=name, scope=scope, scope_key=key, state=state,
            retry_after=max(0, until - now) / 1000.0 if state is State.OPEN else 0.0,
            consecutive_failures=_int(v["consec"]), calls=_int(v["n"]), failures=_int(v["wf"]),
            slow_calls=_int(v["ws"]), trips=_int(v["trips"]),
            totals=Totals(_int(v["n_ok"]), _int(v["n_fail"]), _int(v["n_slow"]),
                          _int(v["n_ign"]), _int(v["n_np"]), _int(v["n_trips"]), open_ms),
            reason=Reason(v["why"], v["why_text"], v["why_err"], v["why_by"], _int(v["why_at"])),
            settings=v["cfg"], stored_name=stored_name,
        )  # fmt: skip

    def breaker(self, name: str, scope: str = "cluster", key: str = "") -> BreakerInfo:
        """One breaker; raises :class:`UnknownBreakerError` if it has no state."""
        stored = join_name(name, scope, key)
        state_key = f"{self.prefix}cb{{{escape_tag(stored)}}}:s"
        state = self._states([state_key])[0]
        if state is None:
            raise UnknownBreakerError(f"no breaker {self._shown(name, scope, key)} under "
                                      f"prefix {self.prefix!r}")  # fmt: skip
        return self._info(stored, state, self.server_ms())

    @staticmethod
    def _shown(name: str, scope: str, key: str) -> str:
        return repr(name) if scope == "cluster" else f"{name!r} [{scope} {key}]"

    def handle(self, name: str, scope: str = "cluster", key: str = "") -> SharedBreaker:
        """A breaker object for operator commands, with the settings stored with its
        state (so the command changes the state, never the fleet's settings)."""
        info = self.breaker(name, scope, key)
        options = options_from_stored(info.settings) if info.settings else BreakerOptions()
        return SharedBreaker(
            info.stored_name, client=self.client, prefix=self.prefix,
            **{f: getattr(options, f) for f in _STORED},
        )  # fmt: skip

    def workers(self) -> list[WorkerStatus]:
        """Every worker whose gate wrote a heartbeat that has not expired."""
        keys = list(self.scan("gate{*}:hb"))
        try:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.get(key)
            blobs = pipe.execute()
        except STORAGE_ERRORS as exc:
            raise StorageError(f"reading heartbeats: {diagnose(exc)}") from exc
        out = []
        for blob in blobs:
            if not blob:
                continue
            try:
                data = msgpack.unpackb(blob, raw=False)
                out.append(WorkerStatus(
                    worker=str(data["worker"]), host=str(data["host"]), pid=int(data["pid"]),
                    queues=[str(q) for q in data["queues"]],
                    paused={str(q): dict(p) for q, p in data["paused"].items()},
                    at_ms=int(data["at"]),
                ))  # fmt: skip
            except (ValueError, TypeError, KeyError, msgpack.UnpackException):
                continue  # a heartbeat this version cannot read: skip it, never fail
        return sorted(out, key=lambda w: w.worker)

    def transactions(self) -> list[TransactionInfo]:
        """Every transaction under the prefix (pending, and decided ones still kept)."""
        head, tail = f"{self.prefix}tx{{", "}:state"
        keys = [k for k in self.scan("tx{*}:state") if k.startswith(head) and k.endswith(tail)]
        fields = ("outcome", "n", "yes", "no", "acked", "deadline", "text")
        out = []
        for key, row in zip(keys, self._read(keys, fields), strict=True):
            if row[0] is None:
                continue
            name = unescape_tag(key[len(head) : -len(tail)])
            out.append(TransactionInfo(
                tx_id=name if isinstance(name, str) else name.decode("utf-8", "replace"),
                outcome=text_of(row[0]), participants=_int(row[1]), yes=_int(row[2]),
                no=_int(row[3]), acked=_int(row[4]), deadline_ms=_int(row[5]),
                reason=text_of(row[6] or ""),
            ))  # fmt: skip
        return sorted(out, key=lambda t: t.tx_id)

    def dead_letters(self) -> list[DeadLetterQueue]:
        """Per queue: dead-lettered tasks waiting, and those added, dropped by the cap,
        replayed and purged (see :mod:`redisbreaker.celery.deadletter`)."""
        head, tail = f"{self.prefix}dlq{{", "}:s"
        out = []
        for key in self.scan("dlq{*}:s"):
            if not (key.startswith(head) and key.endswith(tail)):
                continue
            name = unescape_tag(key[len(head) : -len(tail)])
            queue = name if isinstance(name, str) else name.decode("utf-8", "replace")
            ks = KeySpace.of(self.prefix, "dlq", queue)
            try:
                length = int(self.client.xlen(ks.key("s")))
                counts = {text_of(k): _int(v) for k, v in self.client.hgetall(ks.key("n")).items()}
            except STORAGE_ERRORS as exc:
                raise StorageError(f"reading dead letters: {diagnose(exc)}") from exc
            out.append(DeadLetterQueue(queue, length, counts.get("added", 0),
                                       counts.get("dropped", 0), counts.get("replayed", 0),
                                       counts.get("purged", 0)))  # fmt: skip
        return sorted(out, key=lambda q: q.queue)

    def transaction(self, tx_id: str) -> Transaction:
        return Transaction(tx_id, client=self.client, prefix=self.prefix)

    def status(self, tx_id: str) -> Decision:
        return self.transaction(tx_id).status()


# The options stored with a breaker's state (the shared settings): what handle() copies.
_STORED = (
    "fail_max", "window", "minimum_calls", "failure_rate_threshold", "slow_call_duration",
    "slow_call_rate_threshold", "reset_timeout", "backoff", "half_open_permits",
    "trial_lease", "success_threshold", "ttl",
)  # fmt: skip
