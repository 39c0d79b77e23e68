"""redisbreaker: circuit breakers, pause gates and commit votes for a Celery fleet, in Redis."""

from __future__ import annotations

from importlib import metadata as _metadata

from redisbreaker.breaker import SharedBreaker
from redisbreaker.config import configure
from redisbreaker.errors import (
    BreakerUnavailableError,
    CircuitOpenError,
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
from redisbreaker.options import Backoff, BreakerOptions, CountWindow, OutagePolicy, TimeWindow
from redisbreaker.state import Snapshot, State, Transition
from redisbreaker.transaction import Decision, Outcome, Tally, Transaction

try:
    __version__ = _metadata.version("redisbreaker")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "SharedBreaker",
    "Transaction",
    "Decision",
    "Outcome",
    "Tally",
    "configure",
    "State",
    "Snapshot",
    "Transition",
    "BreakerOptions",
    "CountWindow",
    "TimeWindow",
    "Backoff",
    "OutagePolicy",
    "RedisBreakerError",
    "ConfigurationError",
    "StorageError",
    "CorruptStateError",
    "CircuitOpenError",
    "BreakerUnavailableError",
    "TransactionError",
    "UnknownTransactionError",
    "NotAParticipantError",
    "NotDecidedError",
    "TransactionExistsError",
    "TransactionUnavailableError",
    "TransactionInDoubtError",
]
