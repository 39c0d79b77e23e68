"""The library's exceptions: one small hierarchy, so callers can catch by concept."""

from __future__ import annotations

import redis


class RedisBreakerError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigurationError(RedisBreakerError, ValueError):
    """An option, URL or name is invalid; the message names the bad value."""


class StorageError(RedisBreakerError):
    """Redis could not be reached or answered with an error, and policy says to raise."""

    # The underlying error as ``Class: message``, with what the library knows beyond
    # redis-py's text (the lua/ source line a script error came from); None: describe
    # the cause as it is.
    detail: str | None = None


class CorruptStateError(StorageError):
    """A key holds something this library did not write (wrong type or shape)."""


class CircuitOpenError(RedisBreakerError):
    """The breaker refused the call because it is open (or forced open).

    ``retry_after`` is measured by the Redis server's clock and is the number of
    seconds until the breaker lets a trial call through; ``0.0`` means "now, if a
    half-open permit is free".
    """

    def __init__(self, name: str, retry_after: float, state: str = "open") -> None:
        self.name = name
        self.retry_after = retry_after
        self.state = state
        super().__init__(
            f"circuit {name!r} is {state.replace('_', '-')}; retry after {retry_after:.3f}s"
        )

    def __reduce__(self) -> tuple[type[CircuitOpenError], tuple[str, float, str]]:
        # Celery pickles exceptions into results; keep the fields across that.
        return (type(self), (self.name, self.retry_after, self.state))


class BreakerUnavailableError(CircuitOpenError):
    """Redis is unreachable and the breaker's policy is ``fail_closed``.

    A subclass of :class:`CircuitOpenError`, so code (and the Celery integration)
    that handles an open breaker handles this the same way: the task is retried later.
    """

    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(name, retry_after, state="unavailable")


# What a script call can raise from redis-py or the socket; the breaker core sorts
# outages (the policy applies) from everything else (logged at ERROR). A Cluster client
# raises RedisClusterException, which is no RedisError, when no node can be reached.
STORAGE_ERRORS: tuple[type[BaseException], ...] = (
    redis.RedisError,
    redis.exceptions.RedisClusterException,
    OSError,
)


class TransactionError(RedisBreakerError):
    """A transaction operation was refused; the message names the transaction and why."""


class UnknownTransactionError(TransactionError, LookupError):
    """No tally and no decision exist for this transaction id (never begun, or expired)."""


class NotAParticipantError(TransactionError, ConfigurationError):
    """The transaction names its participants and this id is not one of them."""


class TransactionExistsError(TransactionError):
    """``begin`` was given an id that is already in use (tally or decision)."""


class NotDecidedError(TransactionError):
    """The operation needs a decision (e.g. ``ack``) and the transaction has none yet."""


class TransactionUnavailableError(TransactionError, StorageError):
    """Redis stayed unreachable for the whole retry budget of a transaction call.

    The call was retried (it is idempotent) until the transaction's deadline plus a
    grace, or the caller's own ``timeout``; what it would have done is unknown: a
    vote may be on record. ``last_known`` is the last state this call read, if any.
    """

    def __init__(
        self, message: str, *, tx_id: str, participant: str | None, last_known: object = None
    ) -> None:
        super().__init__(message)
        self.tx_id = tx_id
        self.participant = participant
        self.last_known = last_known

    def __reduce__(self) -> tuple[object, ...]:
        # Celery pickles exceptions into results; keep the fields across that.
        return (_rebuild, (type(self), str(self), self.tx_id, self.participant))


class TransactionInDoubtError(TransactionUnavailableError):
    """``participate()`` could not learn the decision after its block succeeded.

    It called neither ``commit`` nor ``rollback`` and did not ack: the work is left
    uncommitted in the caller's hands. Running the participant again with the same id
    learns the decision (its vote is on record or is cast again) and applies it.
    """


def _rebuild(
    cls: type[TransactionUnavailableError], message: str, tx_id: str, participant: str | None
) -> TransactionUnavailableError:
    return cls(message, tx_id=tx_id, participant=participant)
