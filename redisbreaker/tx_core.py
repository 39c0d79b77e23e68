"""The transaction's pure core: validation, script arguments, reply parsing, next step.

No I/O happens here. :mod:`redisbreaker.transaction` (threads) and
:mod:`redisbreaker.aio.transaction` (asyncio) are thin shells: they run a *plan*
from this module in a short loop (``plan.next()`` says: call this script, sleep this
long, or done), send what it asks for and hand the replies, errors and wake-ups back
to it, so the two never differ in logic.

Every transaction script is idempotent (a vote, ack or claim sent twice counts once),
so a call whose fate is unknown (timeout, dropped connection, Redis restarting) is
sent again, with backoff, until it gets an answer or its budget runs out: the
transaction's deadline plus a grace. Only then does it raise
:class:`TransactionUnavailableError`; a call is never reported failed while it may
have happened.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import logging
import math
import os
import random
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgpack
import redis.exceptions as rx

from redisbreaker.config import validate_commit_replicas
from redisbreaker.errors import (
    ConfigurationError,
    CorruptStateError,
    NotAParticipantError,
    NotDecidedError,
    RedisBreakerError,
    StorageError,
    TransactionError,
    TransactionExistsError,
    TransactionInDoubtError,
    TransactionUnavailableError,
    UnknownTransactionError,
)
from redisbreaker.events import is_cluster
from redisbreaker.keys import KeySpace
from redisbreaker.outage import Trouble, classify
from redisbreaker.scripts import explain, source
from redisbreaker.state import text_of

# Our own generator: background threads (the syncer, waiters) must not draw from the
# global one, which a user (or Hypothesis) may seed and watch. Reseeded after fork.
_rng = random.Random()
os.register_at_fork(after_in_child=_rng.seed)

logger = logging.getLogger("redisbreaker")

T = TypeVar("T")

KIND = "tx"
# How long a decision is kept after it is made, unless told otherwise.
DEFAULT_KEEP = 7 * 24 * 3600.0
# How long after the transaction's deadline a call keeps retrying an unreachable Redis
# (or, while the deadline is not known yet, after the call started). Long enough for a
# restart or a failover; a participant gives up being sure of the decision only then.
DEFAULT_GRACE = 30.0
# Upper bounds, so a value Redis cannot hold exactly never reaches it.
MAX_TIMEOUT = 366 * 24 * 3600.0
MAX_KEEP = 10 * 366 * 24 * 3600.0
MAX_ID_LENGTH = 1024
# Margin added to a waiter's wake-up at the deadline, so the final status read lands
# after the server's deadline even with a little clock drift between us and it.
DEADLINE_MARGIN_MS = 20
# How long a dispatcher holds the claim before another process may take it over.
DEFAULT_CLAIM_LEASE_MS = 30_000
# Retry backoff after an error: exponential from BASE to CAP seconds, with jitter so a
# fleet reconnecting after a restart does not arrive in one burst.
BACKOFF_BASE = 0.05
BACKOFF_CAP = 1.0
# A waiter never reads the status again sooner than this after a read that found the
# transaction pending; the floor doubles with each such read (up to BACKOFF_CAP).
MIN_POLL = 0.02
# While the pub/sub subscription is not confirmed, waiters read the status this often.
DEGRADED_STEP = 0.5

ParticipantId = str | int
ClockMs = Callable[[], int]

SCRIPT_NAMES = (
    "tx_begin",
    "tx_vote",
    "tx_status",
    "tx_abort",
    "tx_ack",
    "tx_claim",
    "tx_dispatched",
    "tx_payload",
    "tx_confirm",
)


class Outcome(enum.Enum):
    """What a transaction has decided (``PENDING`` until it has)."""

    PENDING = "pending"
    COMMIT = "commit"
    ROLLBACK = "rollback"


@dataclass(frozen=True, slots=True)
class Tally:
    """The votes so far; readable at any time (after the decision, as they ended)."""

    participants: int
    yes: int
    no: int
    acked: int
    deadline_ms: int  # server clock, ms since the epoch
    now_ms: int  # server clock when this tally was read

    @property
    def waiting(self) -> int:
        """Participants that have not voted yet."""
        return max(self.participants - self.yes - self.no, 0)

    @property
    def remaining_ms(self) -> int:
        """Time left until the deadline by the server's clock (0 once passed)."""
        return max(self.deadline_ms - self.now_ms, 0)


@dataclass(frozen=True, slots=True)
class Decision:
    """A transaction's state as seen by one call: the outcome, why, and the tally.

    ``reason_kind`` is ``"votes"`` (all voted yes), ``"vote"`` (``participant``
    voted no), ``"timeout"`` (the deadline passed first) or ``"abort"``; ``reason``
    is the text shown to people. ``vote`` is the vote on record for the participant
    the call was made for (``None`` if it has none or none was asked), ``acked``
    whether that participant has acked.
    """

    tx_id: str
    outcome: Outcome
    tally: Tally
    reason: str | None = None
    reason_kind: str | None = None
    participant: str | None = None
    decided_at_ms: int | None = None
    vote: bool | None = None
    acked: bool = False

    @property
    def decided(self) -> bool:
        return self.outcome is not Outcome.PENDING

    @property
    def committed(self) -> bool:
        return self.outcome is Outcome.COMMIT

    def describe(self) -> str:
        """One line for people: the outcome, the reason and the tally."""
        t = self.tally
        counts = f"{t.yes} yes, {t.no} no, {t.waiting} waiting, {t.acked} acked of {t.participants}"
        if not self.decided:
            return f"transaction {self.tx_id!r} pending ({counts})"
        why = self.reason or ""
        if self.reason_kind == "vote" and self.participant is not None:
            why = f"participant {self.participant!r} voted no: {why}"
        elif self.reason_kind == "timeout":
            why = f"timeout: {why}"
        elif self.reason_kind == "abort":
            why = f"aborted: {why}"
        return f"transaction {self.tx_id!r} {self.outcome.value.upper()}: {why} ({counts})"


@dataclass(frozen=True, slots=True)
class Claim:
    """The reply of ``tx_claim``: whether we may dispatch, and what to dispatch."""

    code: str
    granted: bool
    outcome: Outcome
    payload: bytes
    pending: tuple[str, ...]

    @property
    def done(self) -> bool:
        """Every handler has been sent (or there is nothing left to send)."""
        return self.code == "done"


# --- validation (at the API edge, once) ---------------------------------------------


def new_id() -> str:
    return uuid.uuid4().hex


def _utf8(what: str, text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigurationError(f"{what} must be valid UTF-8 text, got {text!r}") from None
    return text


def tx_id(value: object) -> str:
    """A transaction id as the one ``str`` used everywhere (keys, messages, waiters).

    ``bytes`` are accepted and decoded here, so a waiter registered under the id and
    the decision published for it always match.
    """
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigurationError(f"transaction id must be UTF-8 text, got {value!r}") from None
    if not isinstance(value, str):
        raise ConfigurationError(f"transaction id must be a str or bytes, got {value!r}")
    if not value:
        raise ConfigurationError("transaction id must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise ConfigurationError(
            f"transaction id is {len(value)} long; the limit is {MAX_ID_LENGTH}"
        )
    return _utf8("transaction id", value)


def participant_id(participant: object) -> str:
    """Participants are named by str or int; ints are kept as their decimal text."""
    if isinstance(participant, bool) or not isinstance(participant, str | int):
        raise ConfigurationError(f"participant must be a str or int, got {participant!r}")
    text = str(participant)
    if not text:
        raise ConfigurationError("participant must not be empty")
    if len(text) > MAX_ID_LENGTH:
        raise ConfigurationError(f"participant is {len(text)} long; the limit is {MAX_ID_LENGTH}")
    return _utf8("participant", text)


def validate_participants(participants: object) -> tuple[int, tuple[str, ...]]:
    """``N`` or the participants' ids; returns ``(N, names)`` (names empty for ``N``)."""
    if isinstance(participants, bool):
        raise ConfigurationError(f"participants must be an int >= 1, got {participants!r}")
    if isinstance(participants, int):
        if participants < 1:
            raise ConfigurationError(f"participants must be >= 1, got {participants}")
        if participants > 10**9:
            raise ConfigurationError(f"participants must be <= 10**9, got {participants}")
        return participants, ()
    if isinstance(participants, str | bytes) or not isinstance(participants, Sequence):
        raise ConfigurationError(
            f"participants must be an int >= 1 or a sequence of ids, got {participants!r}"
        )
    names = tuple(participant_id(p) for p in participants)
    if not names:
        raise ConfigurationError("participants must name at least one participant, got []")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ConfigurationError(f"participants must be distinct; repeated: {dupes}")
    return len(names), names


def seconds(value: object, what: str = "timeout", maximum: float = MAX_TIMEOUT) -> float:
    """A positive, finite number of seconds no larger than ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{what} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{what} must be > 0 seconds, got {value!r}")
    if value > maximum:
        raise ConfigurationError(f"{what} must be <= {maximum:.0f} seconds, got {value!r}")
    return float(value)


def timeout_ms(timeout: object, what: str = "timeout", maximum: float = MAX_TIMEOUT) -> int:
    """Seconds (int or float) to whole milliseconds; see :func:`seconds`."""
    return max(math.ceil(seconds(timeout, what, maximum) * 1000), 1)


def vote_flag(ok: object) -> str:
    """``"1"`` or ``"0"``; anything but a real bool is refused ("no" is truthy)."""
    if not isinstance(ok, bool):
        raise ConfigurationError(f"ok must be True or False, got {ok!r}")
    return "1" if ok else "0"


def reason_text(reason: object) -> str:
    """The reason as text that always encodes; never raises (a no vote must be sent)."""
    if reason is None:
        return ""
    try:
        if isinstance(reason, BaseException):
            text = f"{type(reason).__name__}: {reason}"
        else:
            text = str(reason)
    except Exception:  # a broken __str__ must not stop the vote it explains
        text = type(reason).__name__
    return text[:4096].encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(frozen=True, slots=True)
class BeginSettings:
    n: int
    names: tuple[str, ...]
    timeout_ms: int
    keep_ms: int
    payload: bytes
    hint: str


def begin_settings(
    participants: object, timeout: object, keep: object, payload: object, hint: object
) -> BeginSettings:
    """Validate ``begin``'s arguments before anything is sent."""
    n, names = validate_participants(participants)
    if not isinstance(payload, bytes):
        raise ConfigurationError(f"payload must be bytes, got {type(payload).__name__}")
    if not isinstance(hint, str):
        raise ConfigurationError(f"timeout_hint must be a str, got {hint!r}")
    return BeginSettings(
        n,
        names,
        timeout_ms(timeout),
        timeout_ms(keep, "keep", MAX_KEEP),
        payload,
        reason_text(hint),
    )


# --- scripts and keys ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Script:
    """One script's text and SHA, computed once per process (not per handle)."""

    name: str
    text: bytes
    sha: str


@functools.cache
def script(name: str) -> Script:
    text = source(name).encode("utf-8")
    return Script(name, text, hashlib.sha1(text).hexdigest())


@dataclass(frozen=True, slots=True)
class Keys:
    """The one key and the channels of one transaction."""

    tx_id: str
    key: str
    channel: str  # on one server: the prefix's channel
    slot_channel: str  # on Redis Cluster: its hash slot's channel (see keys.py)

    @classmethod
    def of(cls, prefix: str, tx_id: str) -> Keys:
        ks = KeySpace.of(prefix, KIND, tx_id)
        return cls(tx_id, ks.key("state"), ks.channel(), ks.channel(sharded=True))

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key,)

    def args(self, clock: ClockMs | None, *rest: object) -> list[Any]:
        """The shared ARGV head (clock override, channel, id) followed by ``rest``."""
        return [str(clock()) if clock else "", self.channel, self.tx_id, *rest]


def begin_args(
    keys: Keys,
    clock: ClockMs | None,
    n: int,
    names: Sequence[str],
    timeout: int,
    keep: int,
    payload: bytes,
    hint: str,
    token: str,
) -> list[Any]:
    return keys.args(clock, n, timeout, keep, payload, hint, token, *names)


# --- replies ------------------------------------------------------------------------


def _int(tx: str, what: str, value: Any, low: int = 0, high: int = 2**53) -> int:
    if isinstance(value, bool) or not isinstance(value, int | bytes | str):
        raise CorruptStateError(f"transaction {tx!r}: {what} is {value!r}, not a number")
    try:
        number = int(value)
    except ValueError:
        raise CorruptStateError(f"transaction {tx!r}: {what} is {value!r}, not a number") from None
    if not low <= number <= high:
        raise CorruptStateError(f"transaction {tx!r}: {what} is {number}, out of range")
    return number


def _refusal(tx: str, code: str, reply: Sequence[Any], participant: str | None) -> Exception:
    """The error for a script's refusal code (nothing was written when it refused)."""
    detail = [text_of(x) for x in reply[1:3]]
    if code == "unknown":
        return UnknownTransactionError(
            f"transaction {tx!r} is unknown: never begun, or its decision has expired"
        )
    if code == "not_member":
        return NotAParticipantError(
            f"participant {participant!r} is not one of transaction {tx!r}'s participants"
        )
    if code == "exists":
        return TransactionExistsError(f"transaction {tx!r} already exists")
    if code == "not_decided":
        return NotDecidedError(
            f"transaction {tx!r} has no decision yet; ack only after commit or rollback"
        )
    if code == "corrupt" and len(detail) == 2:
        return CorruptStateError(
            f"transaction {tx!r}: field {detail[0]!r} holds {detail[1]!r}; this library did "
            "not write that, so the transaction is left as it is (nothing decided)"
        )
    if code == "noperm" and len(detail) == 2:
        return StorageError(
            f"transaction {tx!r}: Redis refused {detail[0]} ({detail[1]}); the user needs "
            "that permission; nothing was written"
        )
    if code == "bad_arg" and len(detail) == 2:
        return ConfigurationError(f"transaction {tx!r}: {detail[0]} {detail[1]!r} is invalid")
    return CorruptStateError(f"transaction {tx!r}: unexpected script reply {list(reply)!r}")


def _code(tx: str, reply: Any) -> str:
    if not isinstance(reply, list | tuple) or not reply:
        raise CorruptStateError(f"transaction {tx!r}: unexpected script reply {reply!r}")
    return text_of(reply[0])


def parse_view(tx: str, reply: Any, participant: str | None = None) -> Decision:
    """Turn a tx script's view reply into a :class:`Decision`, raising on refusals."""
    code = _code(tx, reply)
    if code != "ok":
        raise _refusal(tx, code, reply, participant)
    if len(reply) != 14:
        raise CorruptStateError(f"transaction {tx!r}: unexpected script reply {reply!r}")
    outcome_text = text_of(reply[1])
    try:
        outcome = Outcome(outcome_text)
    except ValueError:
        raise CorruptStateError(f"transaction {tx!r} holds outcome {outcome_text!r}") from None
    n = _int(tx, "participants", reply[6], 1)
    tally = Tally(
        participants=n,
        yes=_int(tx, "yes", reply[7], 0, n),
        no=_int(tx, "no", reply[8], 0, n),
        acked=_int(tx, "acked", reply[9], 0, n),
        deadline_ms=_int(tx, "deadline", reply[10]),
        now_ms=_int(tx, "server time", reply[11]),
    )
    my_vote = text_of(reply[12])
    if my_vote not in ("", "0", "1"):
        raise CorruptStateError(f"transaction {tx!r}: vote on record is {my_vote!r}")
    decided = outcome is not Outcome.PENDING
    who = text_of(reply[3])
    return Decision(
        tx_id=tx,
        outcome=outcome,
        tally=tally,
        reason=text_of(reply[4]) if decided else None,
        reason_kind=text_of(reply[2]) if decided else None,
        participant=who or None,
        decided_at_ms=_int(tx, "decided at", reply[5]) if decided else None,
        vote=None if my_vote == "" else my_vote == "1",
        acked=bool(_int(tx, "acked flag", reply[13], 0, 1)),
    )


def parse_begin(tx: str, token: str, reply: Any) -> Decision | None:
    """The view of a new transaction; ``None`` when an earlier try of this begin made it."""
    if _code(tx, reply) == "exists" and len(reply) > 1 and text_of(reply[1]) == token:
        return None
    return parse_view(tx, reply)


def parse_message(data: bytes) -> Decision | None:
    """A published decision (msgpack array) as a :class:`Decision`; None if malformed."""
    try:
        items = msgpack.unpackb(data, raw=False)
        tx, outcome, kind, who, text, at, n, yes, no, deadline = items
        return Decision(
            tx_id=str(tx),
            outcome=Outcome(outcome),
            tally=Tally(int(n), int(yes), int(no), 0, int(deadline), int(at)),
            reason=str(text),
            reason_kind=str(kind),
            participant=str(who) or None,
            decided_at_ms=int(at),
        )
    except (ValueError, TypeError, msgpack.UnpackException):
        return None


def parse_claim(tx: str, reply: Any) -> Claim:
    code = _code(tx, reply)
    if code not in ("ok", "done", "not_decided", "unknown"):
        raise _refusal(tx, code, reply, None)
    if code == "unknown":
        raise _refusal(tx, code, reply, None)
    if len(reply) < 4:
        raise CorruptStateError(f"transaction {tx!r}: unexpected claim reply {reply!r}")
    payload = reply[3] if isinstance(reply[3], bytes) else text_of(reply[3]).encode()
    try:
        outcome = Outcome(text_of(reply[2]))
    except ValueError:
        raise CorruptStateError(f"transaction {tx!r}: claim reply {reply!r}") from None
    return Claim(
        code=code,
        granted=bool(_int(tx, "granted", reply[1], 0, 1)),
        outcome=outcome,
        payload=payload,
        pending=tuple(text_of(p) for p in reply[4:]),
    )


def parse_payload(tx: str, reply: Any) -> tuple[Outcome, bytes]:
    """The reply of ``tx_payload``: the outcome so far and the payload given at begin."""
    code = _code(tx, reply)
    if code != "ok" or len(reply) != 3:
        raise _refusal(tx, code, reply, None)
    try:
        outcome = Outcome(text_of(reply[1]))
    except ValueError:
        raise CorruptStateError(f"transaction {tx!r}: payload reply {reply!r}") from None
    payload = reply[2] if isinstance(reply[2], bytes) else text_of(reply[2]).encode()
    return outcome, payload


def parse_dispatched(tx: str, reply: Any) -> tuple[bool, bool]:
    if isinstance(reply, list | tuple) and len(reply) == 2 and not isinstance(reply[0], bytes):
        return bool(_int(tx, "held", reply[0], 0, 1)), bool(_int(tx, "done", reply[1], 0, 1))
    raise _refusal(tx, _code(tx, reply), reply, None)


# --- errors from redis-py -----------------------------------------------------------

# Errors after which the same idempotent call is simply sent again: the connection
# dropped or timed out (the command may or may not have run), the pool had no free
# connection, the server is loading or failing over.
_TRANSIENT: tuple[type[BaseException], ...] = (
    rx.ConnectionError,
    rx.TimeoutError,
    OSError,
    rx.ClusterError,
    rx.TryAgainError,
    rx.ReadOnlyError,
    rx.RedisClusterException,
    rx.AskError,  # MovedError too: a slot that moved in a failover (asked again)
)
# ConnectionError subclasses that retrying cannot fix.
_REFUSED: tuple[type[BaseException], ...] = (
    rx.AuthenticationError,
    rx.AuthorizationError,
    rx.ExternalAuthProviderError,
)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _REFUSED) or classify(exc) is Trouble.TLS:
        return False
    if isinstance(exc, rx.ResponseError) and str(exc).startswith(("BUSY", "LOADING")):
        return True
    return isinstance(exc, _TRANSIENT)


def storage_error(tx: str, what: str, exc: BaseException, script: str = "") -> StorageError:
    """The library's error for a redis-py error that retrying cannot fix (a Lua error
    names the source file and line of ``script`` it came from)."""
    text = (str(exc).splitlines() or [""])[0][:200] or type(exc).__name__
    if script and isinstance(exc, rx.ResponseError):
        text = explain(script, text)
    where = f"transaction {tx!r}: {what}"
    if isinstance(exc, rx.ResponseError) and "WRONGTYPE" in text:
        return CorruptStateError(f"{where}: its key holds data this library did not write ({text})")
    trouble = classify(exc)
    if trouble is Trouble.OUT_OF_MEMORY:
        return StorageError(f"{where}: {trouble.value}; nothing was written; {trouble.hint}")
    hint = f"; {trouble.hint}" if trouble.hint else ""
    return StorageError(f"{where}: {trouble.value} ({type(exc).__name__}: {text}){hint}")


# --- plans: what the shells do next -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """Send ``script`` with ``args`` (KEYS are the transaction's key)."""

    script: Script
    args: list[Any]


@dataclass(frozen=True, slots=True)
class Sleep:
    """Sleep ``seconds``; a waiting plan wants to be woken early by its waiter."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Done(Generic[T]):
    value: T


@dataclass
class Context:
    """What one handle learns across calls: the transaction's deadline (local clock)."""

    tx_id: str
    grace: float
    deadline_at: float | None = None  # time.monotonic() terms

    def learn(self, decision: Decision, now: float) -> None:
        self.deadline_at = now + decision.tally.remaining_ms / 1000

    def give_up_at(self, started: float) -> float:
        """Retry until the deadline (once known) or the call's start, plus the grace."""
        known = self.deadline_at if self.deadline_at is not None else started
        return max(started, known) + self.grace


def backoff(attempt: int) -> float:
    return min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** min(attempt, 16)) * _rng.uniform(0.5, 1.0)


class Plan(Generic[T]):
    """The interface the shells drive."""

    def next(self, now: float, ready: bool = True) -> Call | Sleep | Done[T]:
        raise NotImplementedError

    def replied(self, reply: Any, now: float) -> None:
        raise NotImplementedError

    def failed(self, exc: Exception, now: float) -> None:
        raise NotImplementedError

    def woke(self, published: Decision | None, now: float) -> None:
        """After a sleep: the decision the hub delivered meanwhile, if any."""


class Request(Plan[T]):
    """One idempotent script call, sent again after a transient error until answered.

    Gives up at the context's budget (the deadline plus the grace) or ``until`` (a
    caller's own timeout), raising :class:`TransactionUnavailableError`.
    """

    def __init__(
        self,
        ctx: Context,
        what: str,
        call: Call,
        parse: Callable[[Any], T],
        now: float,
        *,
        participant: str | None = None,
        until: float | None = None,
    ) -> None:
        self.ctx = ctx
        self.what = what
        self.call = call
        self.parse = parse
        self.started = now
        self.participant = participant
        self.until = until
        self.attempts = 0
        self.retry_at: float | None = None
        self.result: Done[T] | None = None
        self.last_known: Decision | None = None

    def next(self, now: float, ready: bool = True) -> Call | Sleep | Done[T]:
        if self.result is not None:
            return self.result
        if self.retry_at is not None and now < self.retry_at:
            return Sleep(self.retry_at - now)
        return self.call

    def replied(self, reply: Any, now: float) -> None:
        value = self.parse(reply)
        if isinstance(value, Decision):
            self.ctx.learn(value, now)
        self.result = Done(value)

    def failed(self, exc: Exception, now: float) -> None:
        if isinstance(exc, RedisBreakerError):
            raise exc
        if not isinstance(exc, rx.RedisError | OSError | rx.RedisClusterException):
            raise exc  # not a storage problem: a bug must show as itself
        if not is_transient(exc):
            raise storage_error(self.ctx.tx_id, self.what, exc, self.call.script.name) from exc
        give_up = self.ctx.give_up_at(self.started)
        if self.until is not None:
            give_up = min(give_up, self.until)
        if now >= give_up:
            raise self.unavailable(exc, now) from exc
        self.retry_at = min(now + backoff(self.attempts), give_up)
        self.attempts += 1

    def unavailable(self, exc: Exception, now: float) -> TransactionUnavailableError:
        why = (
            "its own timeout"
            if self.until is not None and now >= self.until
            else (
                f"the transaction's deadline plus {self.ctx.grace:g}s"
                if self.ctx.deadline_at is not None
                else f"{self.ctx.grace:g}s (the deadline was never read)"
            )
        )
        return TransactionUnavailableError(
            f"transaction {self.ctx.tx_id!r}: {self.what}: Redis did not answer "
            f"({type(exc).__name__}: {exc}) in {self.attempts + 1} tries over "
            f"{now - self.started:.1f}s, until {why}; whether it happened is unknown",
            tx_id=self.ctx.tx_id,
            participant=self.participant,
            last_known=self.last_known,
        )


class Waiting(Plan[Decision]):
    """Learn the decision: a first call (vote or status), then sleep and re-read.

    Between reads the waiter sleeps until just after the deadline or its own
    ``until``, woken early by the hub's published decision (done) or its request to
    re-read (after a reconnect). Reads that find the transaction pending are spaced
    by a growing floor, so nothing (a corrupt deadline, a flapping hub) can make a
    waiter poll fast. A read that fails is retried like any :class:`Request`.
    """

    def __init__(
        self,
        ctx: Context,
        first: Request[Decision],
        read: Callable[[float], Request[Decision]],
        now: float,
        until: float | None,
    ) -> None:
        self.ctx = ctx
        self.request: Request[Decision] | None = first
        self.read = read
        self.until = until
        self.final: Done[Decision] | None = None
        self.last: Decision | None = None
        self.last_read = now
        self.wake_at = now
        self.pending_reads = 0

    def next(self, now: float, ready: bool = True) -> Call | Sleep | Done[Decision]:
        if self.final is not None:
            return self.final
        if self.request is not None:
            step = self.request.next(now)
            assert not isinstance(step, Done)  # replied() takes the result
            return step
        floor = min(MIN_POLL * 2.0 ** min(self.pending_reads - 1, 16), BACKOFF_CAP)
        target = self.wake_at
        if not ready:
            target = min(target, self.last_read + DEGRADED_STEP)
        target = max(target, self.last_read + floor)
        if self.until is not None:
            target = min(target, self.until)
        if now < target:
            return Sleep(target - now)
        self.request = self.read(now)
        self.request.last_known = self.last
        return self.request.next(now)

    def replied(self, reply: Any, now: float) -> None:
        assert self.request is not None
        self.request.replied(reply, now)
        assert self.request.result is not None
        decision = self.request.result.value
        self.request = None
        self.last = decision
        self.last_read = now
        if decision.decided or (self.until is not None and now >= self.until):
            self.final = Done(decision)
            return
        self.pending_reads += 1
        self.wake_at = now + (decision.tally.remaining_ms + DEADLINE_MARGIN_MS) / 1000

    def failed(self, exc: Exception, now: float) -> None:
        assert self.request is not None
        self.request.failed(exc, now)

    def woke(self, published: Decision | None, now: float) -> None:
        if published is not None:
            self.ctx.learn(published, now)
            self.final = Done(published)
            self.request = None
        elif self.request is None:
            # Woken without a decision: the hub asks for a re-read (or the sleep ran
            # out); next() still keeps the floor between reads.
            self.wake_at = min(self.wake_at, now)


# --- the handle's calls, shared by both shells --------------------------------------

MAX_GRACE = 24 * 3600.0


class TxBase:
    """State and plan builders of a transaction handle; the shells add only the I/O.

    The client is resolved on first use, as breakers do: a handle can be made at
    import time, before ``configure()``.
    """

    id: str
    prefix: str
    _keys: Keys
    _ctx: Context
    # Tests replace this with a virtual clock (ms); None means the server's TIME.
    _clock_ms: ClockMs | None
    _given_client: Any

    def _setup(
        self, tx: object, prefix: str, grace: object, client: Any, replicas: int = 0
    ) -> None:
        self.id = tx_id(tx)
        self.commit_replicas = validate_commit_replicas(replicas)
        self.prefix = prefix
        self._keys = Keys.of(prefix, self.id)
        self._ctx = Context(self.id, seconds(grace, "grace", MAX_GRACE))
        self._clock_ms = None
        self._given_client = client
        self._is_sharded: bool | None = None

    @property
    def client(self) -> Any:
        """The Redis client of this handle (the configured one, resolved on first use)."""
        client = self._given_client
        if client is None:
            client = self._given_client = self._default_client()
        return client

    def _default_client(self) -> Any:
        raise NotImplementedError

    @property
    def key(self) -> str:
        """The Redis key holding this transaction (one hash)."""
        return self._keys.key

    @property
    def channel(self) -> str:
        """The pub/sub channel its decision is published on: the prefix's, or on Redis
        Cluster its hash slot's (resolves the client)."""
        return self._keys.slot_channel if self._sharded() else self._keys.channel

    def _sharded(self) -> bool:
        """Whether the client is a Redis Cluster client. Known once the client is, so
        the shells ask inside their coroutines (an asyncio default client belongs to
        the running loop), not when a plan is made."""
        sharded = self._is_sharded
        if sharded is None:
            sharded = self._is_sharded = is_cluster(self.client)
        return sharded

    def _argv(self, call: Call) -> list[Any]:
        """``call``'s ARGV for this handle's client: on Redis Cluster, ARGV[2] (the
        channel, see lua/lib/tx.lua) is the hash slot's channel."""
        if not self._sharded():
            return call.args
        return [call.args[0], self._keys.slot_channel, *call.args[2:]]

    def _request(
        self,
        what: str,
        name: str,
        rest: Sequence[object],
        parse: Callable[[Any], T],
        now: float,
        participant: str | None = None,
        until: float | None = None,
    ) -> Request[T]:
        call = Call(script(name), self._keys.args(self._clock_ms, *rest))
        return Request(self._ctx, what, call, parse, now, participant=participant, until=until)

    def _begin_plan(
        self,
        n: int,
        names: Sequence[str],
        timeout: int,
        keep: int,
        payload: bytes,
        hint: str,
        now: float,
    ) -> Request[Decision | None]:
        token = new_id()
        call = Call(
            script("tx_begin"),
            begin_args(self._keys, self._clock_ms, n, names, timeout, keep, payload, hint, token),
        )
        # A begin is worth retrying only while the transaction could still be used.
        return Request(
            self._ctx,
            "begin",
            call,
            functools.partial(parse_begin, self.id, token),
            now,
            until=now + timeout / 1000,
        )

    def _vote_plan(
        self, participant: object, ok: object, reason: object, now: float, until: float | None
    ) -> Request[Decision]:
        p = participant_id(participant)
        rest = (p, vote_flag(ok), reason_text(reason))
        parse = functools.partial(parse_view, self.id, participant=p)
        return self._request(f"vote of {p!r}", "tx_vote", rest, parse, now, p, until)

    def _status_plan(
        self, participant: str | None, now: float, until: float | None = None
    ) -> Request[Decision]:
        parse = functools.partial(parse_view, self.id, participant=participant)
        return self._request(
            "status", "tx_status", (participant or "",), parse, now, participant, until
        )

    def _abort_plan(self, reason: object, now: float) -> Request[Decision]:
        parse = functools.partial(parse_view, self.id)
        return self._request("abort", "tx_abort", (reason_text(reason),), parse, now)

    def _ack_plan(self, participant: object, now: float) -> Request[Decision]:
        p = participant_id(participant)
        parse = functools.partial(parse_view, self.id, participant=p)
        return self._request(f"ack of {p!r}", "tx_ack", (p,), parse, now, p)

    def _payload_plan(self, now: float) -> Request[tuple[Outcome, bytes]]:
        parse = functools.partial(parse_payload, self.id)
        return self._request("payload", "tx_payload", (), parse, now)

    def _claim_plan(self, token: str, lease_ms: int, now: float) -> Request[Claim]:
        parse = functools.partial(parse_claim, self.id)
        return self._request("claim", "tx_claim", (token, lease_ms), parse, now)

    def _dispatched_plan(
        self, token: str, participants: Sequence[str], lease_ms: int, now: float
    ) -> Request[tuple[bool, bool]]:
        parse = functools.partial(parse_dispatched, self.id)
        rest = (token, lease_ms, *participants)
        return self._request("dispatch record", "tx_dispatched", rest, parse, now)

    def _wait_plan(
        self,
        vote: tuple[object, object, object] | None,
        timeout: object,
        participant: object,
        now: float,
    ) -> Waiting:
        until = now + seconds(timeout) if timeout is not None else None
        p = participant_id(participant) if participant is not None else None
        if vote is not None:
            first = self._vote_plan(vote[0], vote[1], vote[2], now, until)
        else:
            first = self._status_plan(p, now, until)
        return Waiting(self._ctx, first, lambda at: self._status_plan(p, at, until), now, until)


# --- confirming a commit on replicas (opt-in: commit_replicas) ----------------------

# How long one WAIT waits for the replicas.
CONFIRM_WAIT_MS = 1000


def to_confirm(value: object, replicas: int) -> bool:
    """Whether ``value`` (what a call is about to return) shows a commit that must be
    confirmed on ``replicas`` replicas first. Only a commit needs it: acting on a
    rollback that Redis then loses is safe, because the transaction still ends in
    rollback (by its deadline), while a lost commit ends in rollback after someone
    committed."""
    if replicas <= 0:
        return False
    if isinstance(value, Decision | Claim):
        return value.outcome is Outcome.COMMIT
    return isinstance(value, tuple) and bool(value) and value[0] is Outcome.COMMIT


def confirm_call() -> Call:
    """The ``tx_confirm`` call (its ARGV is the tx head, unused by the script)."""
    return Call(script("tx_confirm"), ["", "", ""])


def commit_lost(tx: str) -> TransactionUnavailableError:
    return TransactionUnavailableError(
        f"transaction {tx!r}: the COMMIT this call read is no longer in Redis (it failed "
        "over to a replica that did not have it yet); not handed over. Ask again: the "
        "transaction ends as its replicas decide",
        tx_id=tx, participant=None,
    )  # fmt: skip


def unconfirmed(tx: str, replicas: int, acked: int) -> TransactionUnavailableError:
    seen = "no answer" if acked < 0 else f"{acked} acknowledged"
    return TransactionUnavailableError(
        f"transaction {tx!r}: decided COMMIT, but fewer than the {replicas} replica(s) "
        f"commit_replicas asks for confirmed it in time ({seen}); not handed over, since "
        "Redis could still lose it (are the replicas up? see docs/redis.md)",
        tx_id=tx, participant=None,
    )  # fmt: skip


# --- blocking participation ---------------------------------------------------------


def in_doubt(tx: str, participant: str, exc: Exception) -> TransactionInDoubtError:
    """participate()'s error when the decision could not be learned after voting yes."""
    last = getattr(exc, "last_known", None)
    return TransactionInDoubtError(
        f"transaction {tx!r}: participant {participant!r} voted yes (or may have) and "
        f"could not learn the decision ({exc}); neither commit nor rollback was called "
        "and it did not ack. Run it again with the same participant id to learn the "
        "decision and apply it",
        tx_id=tx,
        participant=participant,
        last_known=last,
    )


@contextmanager
def logged(tx: str, participant: str, what: str) -> Iterator[None]:
    """Best-effort bookkeeping: log a transaction/storage error instead of raising it.

    Used where the caller's own outcome is already fixed (a failed block being
    re-raised, an ack after commit): raising would hide it or redo applied work.
    """
    try:
        yield
    except (TransactionError, StorageError) as exc:
        logger.warning("transaction %r: participant %r: %s failed: %s", tx, participant, what, exc)


# Given at ``begin`` by blocking-mode launchers; the script appends it to a timeout's
# reason when some participants never voted.
BLOCKING_HINT = (
    "in blocking mode this usually means fewer free worker slots than participants "
    "(each participant holds a slot while it waits); give the workers at least as many "
    "free slots as participants"
)
