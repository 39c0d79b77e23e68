"""Transactions from Celery: start N tasks as one transaction, in one of two modes.

**blocking** (the seed's model): each task opens its database transaction, does its
work inside ``Transaction(tx_id).participate(...)``, which votes, waits for the
decision, then commits or rolls back and acks. Simple, and the database does the
staging; but every participant holds a worker slot while it waits, so the fleet
needs at least N free slots at once or it deadlocks until the deadline, which then
decides ROLLBACK with a reason that says so.

**callback**: each task stages its work durably, votes (:func:`vote` or
:func:`staged`) and returns. The vote that decides claims the dispatch (one process
at a time, with a lease) and sends every participant's commit or rollback handler;
if that process dies mid-dispatch, the lease runs out and the watchdog task (or any
later vote) sends the rest. A handler can therefore run more than once: handlers
must be idempotent. Decorate them with :func:`handler`, which skips participants
that have already acked and acks after the handler returns.

Call :func:`install` on the app so its workers know the watchdog task.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, ParamSpec, TypeVar

import msgpack
from celery import Celery, Task
from celery.canvas import Signature

from redisbreaker import _txcore as core
from redisbreaker._txcore import Decision, Outcome
from redisbreaker.config import SyncClient
from redisbreaker.errors import ConfigurationError
from redisbreaker.transaction import Transaction

__all__ = [
    "WATCHDOG_TASK",
    "dispatch",
    "handler",
    "install",
    "staged",
    "start_transaction",
    "vote",
]

log = logging.getLogger("redisbreaker.celery.transactions")

WATCHDOG_TASK = "redisbreaker.tx_watchdog"
# Handlers are sent and recorded in batches: a dispatcher that dies resends at most
# one batch.
_BATCH = 50
# The watchdog fires this long after the deadline (seconds), then retries until every
# handler has been sent.
_WATCHDOG_GRACE = 1.0

Mode = Literal["blocking", "callback"]
P = ParamSpec("P")
R = TypeVar("R")


def _app(app: Celery | None) -> Celery:
    if app is not None:
        return app
    from celery import current_app

    return current_app


def start_transaction(
    signatures: Sequence[Signature[Any]],
    *,
    timeout: float,
    mode: Mode = "blocking",
    on_commit: Signature[Any] | None = None,
    on_rollback: Signature[Any] | None = None,
    app: Celery | None = None,
    client: SyncClient | None = None,
    prefix: str | None = None,
    tx_id: str | None = None,
    keep: float = core.DEFAULT_KEEP,
) -> Transaction:
    """Start one task per signature as participants of one new transaction.

    Participant ``i`` is named ``str(i)``; each task is called with the extra keyword
    arguments ``tx_id`` and ``participant``. In callback mode ``on_commit`` and
    ``on_rollback`` are called once per participant with ``tx_id``, ``participant``
    and ``outcome`` added to their keyword arguments. If sending fails part way, the
    transaction is aborted (ROLLBACK) before the error propagates.
    """
    if not signatures:
        raise ConfigurationError("start_transaction needs at least one signature, got none")
    if mode not in ("blocking", "callback"):
        raise ConfigurationError(f"mode must be 'blocking' or 'callback', got {mode!r}")
    if mode == "callback" and (on_commit is None or on_rollback is None):
        raise ConfigurationError("callback mode needs both on_commit= and on_rollback=")
    if mode == "blocking" and (on_commit is not None or on_rollback is not None):
        raise ConfigurationError("on_commit/on_rollback are for mode='callback' only")
    celery_app = _app(app)
    names = [str(i) for i in range(len(signatures))]
    payload = b""
    if on_commit is not None and on_rollback is not None:
        payload = msgpack.packb(
            {"commit": dict(on_commit), "rollback": dict(on_rollback)}, use_bin_type=True
        )
    tx = Transaction.begin(
        names,
        timeout=timeout,
        tx_id=tx_id,
        keep=keep,
        client=client,
        prefix=prefix,
        payload=payload,
        timeout_hint=core.BLOCKING_HINT if mode == "blocking" else "",
    )
    try:
        if mode == "callback":
            celery_app.send_task(
                WATCHDOG_TASK,
                kwargs={"tx_id": tx.id, "prefix": prefix},
                countdown=timeout + _WATCHDOG_GRACE,
            )
        for name, sig in zip(names, signatures, strict=True):
            sig.clone(kwargs={"tx_id": tx.id, "participant": name}).apply_async()
    except BaseException as exc:
        tx.abort(f"sending the participants failed: {core.reason_text(exc)}")
        raise
    return tx


def vote(
    tx_id: str,
    participant: str,
    ok: bool,
    *,
    reason: object = None,
    app: Celery | None = None,
    client: SyncClient | None = None,
    prefix: str | None = None,
) -> Decision:
    """Callback mode: vote and return; if this vote decided, dispatch the handlers."""
    tx = Transaction(tx_id, client=client, prefix=prefix)
    decision = tx.vote(participant, ok, reason=reason)
    if decision.decided:
        dispatch(tx, app=app)
    return decision


@contextlib.contextmanager
def staged(
    tx_id: str,
    participant: str,
    *,
    app: Celery | None = None,
    client: SyncClient | None = None,
    prefix: str | None = None,
) -> Iterator[None]:
    """Callback mode: stage inside the block; vote yes if it returns, no if it raises."""
    try:
        yield
    except BaseException as exc:
        vote(tx_id, participant, False, reason=exc, app=app, client=client, prefix=prefix)
        raise
    vote(tx_id, participant, True, app=app, client=client, prefix=prefix)


def dispatch(
    tx: Transaction, *, app: Celery | None = None, lease_ms: int = core.DEFAULT_CLAIM_LEASE_MS
) -> bool:
    """Send the decided transaction's handlers not sent yet, if we get the claim.

    Returns True once every handler has been sent (by us or earlier), False if the
    transaction is undecided or another live process holds the claim.
    """
    celery_app = _app(app)
    token = uuid.uuid4().hex
    claim = tx._claim(token, lease_ms)
    if claim.done:
        return True
    if not claim.granted:
        return False
    handlers = msgpack.unpackb(claim.payload, raw=False)
    spec = handlers[claim.outcome.value]
    pending = list(claim.pending)
    done = not pending
    for start in range(0, len(pending), _BATCH):
        batch = pending[start : start + _BATCH]
        for participant in batch:
            sig = celery_app.signature(spec).clone(
                kwargs={"tx_id": tx.id, "participant": participant, "outcome": claim.outcome.value}
            )
            # A deterministic id makes a resent handler recognisable in the result backend.
            sig.apply_async(task_id=f"{tx.id}:{participant}:{claim.outcome.value}")
        held, done = tx._dispatched(token, batch, lease_ms)
        if not held:
            log.warning("transaction %r: dispatch claim lost; another process continues", tx.id)
            return False
    if not pending:
        _, done = tx._dispatched(token, [], lease_ms)
    return done


def handler(func: Callable[P, R]) -> Callable[P, R | None]:
    """Make a commit/rollback handler run at most once per acked participant.

    The wrapped function receives ``tx_id``, ``participant`` and ``outcome`` keyword
    arguments. If the participant has already acked, it is skipped (returns None);
    after it returns, the participant is acked. A crash between the handler's effect
    and the ack runs it again: it must be idempotent.
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
        tx = Transaction(str(kwargs["tx_id"]))
        participant = str(kwargs["participant"])
        if tx.status(participant).acked:
            return None
        result = func(*args, **kwargs)
        tx.ack(participant)
        return result

    return wrapper


def _watchdog(task: Task[Any, Any], tx_id: str, prefix: str | None = None) -> str:
    tx = Transaction(tx_id, prefix=prefix)
    decision = tx.status()
    if not decision.decided:
        raise task.retry(countdown=decision.tally.remaining_ms / 1000 + _WATCHDOG_GRACE)
    if not dispatch(tx, app=task.app):
        raise task.retry(countdown=core.DEFAULT_CLAIM_LEASE_MS / 1000)
    return decision.outcome.value


def install(app: Celery) -> None:
    """Register the watchdog task (needed by callback mode) on ``app``."""
    app.task(name=WATCHDOG_TASK, bind=True, max_retries=None, ignore_result=True)(_watchdog)


__all__ += ["Outcome"]
