"""The transaction's pure core: validation, script arguments, reply parsing, next step.

No I/O happens here. :mod:`redisbreaker.transaction` (threads) and
:mod:`redisbreaker.aio.transaction` (asyncio) are thin shells that send what this
module builds and hand the replies back to it, so the two never differ in logic.
"""

from __future__ import annotations

import enum
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from redisbreaker.errors import (
    ConfigurationError,
    CorruptStateError,
    NotAParticipantError,
    NotDecidedError,
    TransactionExistsError,
    UnknownTransactionError,
)
from redisbreaker.keys import KeySpace

KIND = "tx"
# How long a decision (the tombstone) is kept after it is made, unless told otherwise.
DEFAULT_KEEP = 7 * 24 * 3600.0
# Margin added to a waiter's own timeout at the deadline, so the final status read
# lands after the server's deadline even with a little clock drift between us and it.
DEADLINE_MARGIN_MS = 20
# How long a dispatcher holds the claim before another process may take it over.
DEFAULT_CLAIM_LEASE_MS = 30_000

ParticipantId = str | int
ClockMs = Callable[[], int]


class Outcome(enum.Enum):
    """What a transaction has decided (``PENDING`` until it has)."""

    PENDING = "pending"
    COMMIT = "commit"
    ROLLBACK = "rollback"


@dataclass(frozen=True, slots=True)
class Tally:
    """The votes so far; readable at any time (after cleanup, as of the decision)."""

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


# --- validation -------------------------------------------------------------------


def new_id() -> str:
    return uuid.uuid4().hex


def participant_id(participant: object) -> str:
    """Participants are named by str or int; ints are kept as their decimal text."""
    if isinstance(participant, bool) or not isinstance(participant, str | int):
        raise ConfigurationError(f"participant must be a str or int, got {participant!r}")
    text = str(participant)
    if not text:
        raise ConfigurationError("participant must not be empty")
    return text


def validate_participants(participants: object) -> tuple[int, tuple[str, ...]]:
    """``N`` or the participants' ids; returns ``(N, names)`` (names empty for ``N``)."""
    if isinstance(participants, bool):
        raise ConfigurationError(f"participants must be an int >= 1, got {participants!r}")
    if isinstance(participants, int):
        if participants < 1:
            raise ConfigurationError(f"participants must be >= 1, got {participants}")
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


def timeout_ms(timeout: object, what: str = "timeout") -> int:
    """Seconds (int or float) to whole milliseconds; must be positive and finite."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ConfigurationError(f"{what} must be a number of seconds, got {timeout!r}")
    if not math.isfinite(timeout) or timeout <= 0:
        raise ConfigurationError(f"{what} must be > 0 seconds, got {timeout!r}")
    return max(math.ceil(timeout * 1000), 1)


def reason_text(reason: object) -> str:
    if reason is None:
        return ""
    if isinstance(reason, BaseException):
        return f"{type(reason).__name__}: {reason}"[:4096]
    return str(reason)[:4096]


# --- script calls -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Keys:
    """The keys and channel of one transaction (all under one hash tag)."""

    tx_id: str
    keys: tuple[str, ...]
    channel: str

    @classmethod
    def of(cls, prefix: str, tx_id: str) -> Keys:
        ks = KeySpace.of(prefix, KIND, tx_id)
        parts = ("meta", "votes", "members", "decision", "claim", "dispatched")
        return cls(tx_id, tuple(ks.key(p) for p in parts), ks.channel())

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
) -> list[Any]:
    return keys.args(clock, n, timeout, keep, payload, hint, *names)


def vote_args(
    keys: Keys, clock: ClockMs | None, participant: str, ok: bool, reason: str
) -> list[Any]:
    return keys.args(clock, participant, "1" if ok else "0", reason)


# --- replies ------------------------------------------------------------------------


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise CorruptStateError(
            f"transaction reply holds {value!r} where a number was expected"
        ) from None


def parse_view(tx_id: str, reply: Any, participant: str | None = None) -> Decision:
    """Turn a tx script's view reply into a :class:`Decision`, raising on error codes."""
    if not isinstance(reply, list | tuple) or len(reply) != 14:
        raise CorruptStateError(f"transaction {tx_id!r}: unexpected script reply {reply!r}")
    code = _text(reply[0])
    if code == "unknown":
        raise UnknownTransactionError(
            f"transaction {tx_id!r} is unknown: never begun, or its decision has expired"
        )
    if code == "not_member":
        raise NotAParticipantError(
            f"participant {participant!r} is not one of transaction {tx_id!r}'s participants"
        )
    if code == "exists":
        raise TransactionExistsError(f"transaction {tx_id!r} already exists")
    if code == "not_decided":
        raise NotDecidedError(
            f"transaction {tx_id!r} has no decision yet; ack only after commit or rollback"
        )
    if code != "ok":
        raise CorruptStateError(f"transaction {tx_id!r}: unexpected reply code {code!r}")
    outcome_text = _text(reply[1])
    try:
        outcome = Outcome(outcome_text)
    except ValueError:
        raise CorruptStateError(f"transaction {tx_id!r} holds outcome {outcome_text!r}") from None
    tally = Tally(
        participants=_int(reply[6]),
        yes=_int(reply[7]),
        no=_int(reply[8]),
        acked=_int(reply[9]),
        deadline_ms=_int(reply[10]),
        now_ms=_int(reply[11]),
    )
    my_vote = _text(reply[12])
    decided = outcome is not Outcome.PENDING
    who = _text(reply[3])
    return Decision(
        tx_id=tx_id,
        outcome=outcome,
        tally=tally,
        reason=_text(reply[4]) if decided else None,
        reason_kind=_text(reply[2]) if decided else None,
        participant=who or None,
        decided_at_ms=_int(reply[5]) if decided else None,
        vote=None if my_vote == "" else my_vote == "1",
        acked=bool(_int(reply[13])),
    )


def parse_message(data: bytes) -> Decision | None:
    """A published decision (msgpack array) as a :class:`Decision`; None if malformed."""
    try:
        items = msgpack.unpackb(data, raw=False)
        tx_id, outcome, kind, who, text, at, n, yes, no, deadline = items
        return Decision(
            tx_id=str(tx_id),
            outcome=Outcome(outcome),
            tally=Tally(int(n), int(yes), int(no), 0, int(deadline), int(at)),
            reason=str(text),
            reason_kind=str(kind),
            participant=str(who) or None,
            decided_at_ms=int(at),
        )
    except (ValueError, TypeError, msgpack.UnpackException):
        return None


def parse_claim(tx_id: str, reply: Any) -> Claim:
    if not isinstance(reply, list | tuple) or len(reply) < 4:
        raise CorruptStateError(f"transaction {tx_id!r}: unexpected claim reply {reply!r}")
    code = _text(reply[0])
    if code == "unknown":
        raise UnknownTransactionError(f"transaction {tx_id!r} is unknown")
    payload = reply[3] if isinstance(reply[3], bytes) else _text(reply[3]).encode()
    return Claim(
        code=code,
        granted=bool(_int(reply[1])),
        outcome=Outcome(_text(reply[2])),
        payload=payload,
        pending=tuple(_text(p) for p in reply[4:]),
    )


# --- what to do next ----------------------------------------------------------------


def wait_step(decision: Decision, until_ms: int | None) -> float | None:
    """How long (seconds) a waiter should sleep on its event before reading again.

    ``None`` means stop: the transaction is decided, or the caller's own time limit
    (``until_ms``, in the same server-clock terms as the tally) has run out. A waiter
    with no limit of its own sleeps until just after the deadline, where its status
    read decides ROLLBACK if nobody else has.
    """
    if decision.decided:
        return None
    now = decision.tally.now_ms
    wake = decision.tally.deadline_ms + DEADLINE_MARGIN_MS
    if until_ms is not None:
        if now >= until_ms:
            return None
        wake = min(wake, until_ms)
    return max(wake - now, 1) / 1000.0


# Given at ``begin`` by blocking-mode launchers; the script appends it to a timeout's
# reason when some participants never voted.
BLOCKING_HINT = (
    "in blocking mode this usually means fewer free worker slots than participants "
    "(each participant holds a slot while it waits); give the workers at least as many "
    "free slots as participants"
)
