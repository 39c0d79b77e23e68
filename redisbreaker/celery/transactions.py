"""Transactions from Celery: start N tasks as one transaction, in one of two modes.

**blocking**: each task opens its database transaction, does its
work inside ``Transaction(tx_id).participate(...)``, which votes, waits for the
decision, then commits or rolls back and acks. Simple, and the database does the
staging; but every participant holds a worker slot while it waits, so the fleet
needs at least N free slots at once or it deadlocks until the deadline, which then
decides ROLLBACK with a reason that says so.

**callback**: each task stages its work durably inside :func:`staged`, which votes
and returns. The vote that decides claims the dispatch (one process at a time, with
a lease) and sends every participant's commit or rollback handler; if that process
dies mid-dispatch, the lease runs out and the watchdog task (or any later vote)
sends the rest. A handler can therefore run more than once: handlers must be
idempotent. Decorate them with :func:`handler`, which skips participants that have
already acked and acks after the handler returns.

A stage that comes too late is undone, in either order: :func:`staged` reads the
status first and skips its body once the transaction is decided; a stage that raced
the decision (its vote came after it, so it did not count) runs that participant's
rollback handler itself, in the same task, before it ends.

Every function here finds Redis by the rule of :class:`~redisbreaker.celery.settings.
Settings` (``client=`` > ``app.conf.redisbreaker_url`` > ``configure()`` /
``REDISBREAKER_URL`` > the broker URL). ``redisbreaker.celery.install(app)`` registers
the watchdog task the workers need.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, ParamSpec, TypeVar

import msgpack
from celery import Celery, Task
from celery.canvas import Signature
from celery.exceptions import Ignore

from redisbreaker import tx_core as core
from redisbreaker.celery.settings import settings_for
from redisbreaker.config import SyncClient
from redisbreaker.errors import ConfigurationError
from redisbreaker.transaction import Transaction
from redisbreaker.tx_core import Decision, Outcome

__all__ = [
    "WATCHDOG_TASK",
    "Outcome",
    "StageSkipped",
    "dispatch",
    "handler",
    "staged",
    "start_transaction",
    "transaction",
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
# The keyword argument that carries a transaction's prefix to its handlers when it is
# not the app's (``@handler`` removes it before calling the function).
PREFIX_KWARG = "tx_prefix"

Mode = Literal["blocking", "callback"]
P = ParamSpec("P")
R = TypeVar("R")

# Set while staged() runs a participant's rollback handler itself, after a late stage:
# that handler must run even though the participant has acked.
_forced: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "redisbreaker_forced_handler", default=None
)


class StageSkipped(Ignore):
    """:func:`staged` did not keep this stage: the transaction was decided before it.

    A subclass of Celery's ``Ignore``: the task ends as ignored, not failed, and
    nothing after the ``with`` block runs. ``undone`` is True when the body had run
    (the stage raced the decision) and the participant's rollback handler was run.
    """

    def __init__(self, decision: Decision, participant: str, undone: bool = False) -> None:
        self.decision = decision
        self.participant = participant
        self.undone = undone
        what = "staged and rolled back" if undone else "not staged"
        super().__init__(f"participant {participant!r} {what}: {decision.describe()}")

    def __reduce__(self) -> tuple[Any, ...]:
        # A prefork child pickles the exception back to its parent.
        return (type(self), (self.decision, self.participant, self.undone))


def _app(app: Celery | None) -> Celery:
    if app is not None:
        return app
    from celery import current_app

    return current_app


def _running_app() -> Celery:
    """The app of the task being run (eager or in a worker), else the current app."""
    from celery import current_task

    return current_task.app if current_task else _app(None)


def transaction(
    tx_id: str,
    *,
    app: Celery | None = None,
    client: SyncClient | None = None,
    prefix: str | None = None,
) -> Transaction:
    """A handle on ``tx_id`` with the app's Redis and prefix (unless given here)."""
    conf = settings_for(_app(app))
    return Transaction(
        tx_id,
        client=client if client is not None else conf.client(),
        prefix=prefix if prefix is not None else conf.prefix,
        commit_replicas=conf.commit_replicas,
    )


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

    ``client``/``prefix`` default to the app's (see the module docstring). A
    ``prefix`` other than the app's travels to the tasks and handlers as the keyword
    argument ``tx_prefix`` (``@handler`` takes it; a participant task must accept it
    and pass it on as ``prefix=``).
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
    conf = settings_for(celery_app)
    own_prefix = prefix is not None and prefix != conf.prefix
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
        client=client if client is not None else conf.client(),
        prefix=prefix if prefix is not None else conf.prefix,
        payload=payload,
        timeout_hint=core.BLOCKING_HINT if mode == "blocking" else "",
        commit_replicas=conf.commit_replicas,
    )
    extra = {PREFIX_KWARG: tx.prefix} if own_prefix else {}
    try:
        if mode == "callback" and not celery_app.conf.task_always_eager:
            # (Eager mode runs the whole transaction in this call: nothing to watch.)
            celery_app.send_task(
                WATCHDOG_TASK,
                kwargs={"tx_id": tx.id, "prefix": tx.prefix},
                countdown=timeout + _WATCHDOG_GRACE,
            )
        for name, sig in zip(names, signatures, strict=True):
            sig.clone(kwargs={"tx_id": tx.id, "participant": name, **extra}).apply_async()
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
    """Callback mode: vote and return; if this vote decided, dispatch the handlers.

    ``Decision.vote`` is the vote on record for ``participant``: ``None`` means this
    vote came after the decision and did not count (see :func:`staged`, which acts
    on that).
    """
    tx = transaction(tx_id, app=app, client=client, prefix=prefix)
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
) -> Iterator[Decision]:
    """Callback mode: stage inside the block; vote yes if it returns, no if it raises.

    One status read comes first: if the transaction is already decided, the body is
    skipped (:class:`StageSkipped`, a Celery ``Ignore``). If the vote after the body
    comes too late to count (another participant's no, or the deadline, decided
    meanwhile, and this participant's rollback handler may already have run), this
    participant's rollback handler is run here, in this task, and then
    :class:`StageSkipped` ends the task (or the body's own exception is re-raised).
    The value of the ``with`` is the status read before the body.
    """
    tx = transaction(tx_id, app=app, client=client, prefix=prefix)
    before = tx.status(participant)
    if before.decided:
        skipped = StageSkipped(before, participant, undone=False)
        log.info("transaction %r: %s", tx.id, skipped)
        raise skipped
    try:
        yield before
    except BaseException as exc:
        after = vote(tx_id, participant, False, reason=exc, app=app, client=tx.client,
                     prefix=tx.prefix)  # fmt: skip
        if after.vote is None:
            _undo_late_stage(tx, participant, app)
        raise
    after = vote(tx_id, participant, True, app=app, client=tx.client, prefix=tx.prefix)
    if after.vote is None:
        _undo_late_stage(tx, participant, app)
        raise StageSkipped(after, participant, undone=True)


def _undo_late_stage(tx: Transaction, participant: str, app: Celery | None) -> None:
    """Run ``participant``'s rollback handler in this process, even if it has acked."""
    outcome, payload = tx.payload()
    if outcome is not Outcome.ROLLBACK:  # cannot happen: COMMIT needs this vote
        raise ConfigurationError(f"transaction {tx.id!r}: a late vote with outcome {outcome}")
    log.warning(
        "transaction %r: participant %r staged after the decision (%s); running its "
        "rollback handler here", tx.id, participant, outcome.value,
    )  # fmt: skip
    celery_app = _app(app)
    sig = _handler_signature(celery_app, tx, payload, participant, outcome)
    token = _forced.set((tx.id, participant))
    try:
        sig.apply(throw=True)  # in this process: the stage is undone before the task ends
    finally:
        _forced.reset(token)


def _handler_signature(
    app: Celery, tx: Transaction, payload: bytes, participant: str, outcome: Outcome
) -> Signature[Any]:
    handlers = msgpack.unpackb(payload, raw=False)
    kwargs: dict[str, Any] = {"tx_id": tx.id, "participant": participant, "outcome": outcome.value}
    if tx.prefix != settings_for(app).prefix:
        kwargs[PREFIX_KWARG] = tx.prefix
    return app.signature(handlers[outcome.value]).clone(kwargs=kwargs)


def dispatch(
    tx: Transaction, *, app: Celery | None = None, lease_ms: int = core.DEFAULT_CLAIM_LEASE_MS
) -> bool:
    """Send the decided transaction's handlers not sent yet, if we get the claim.

    Returns True once every handler has been sent (by us or earlier), False if the
    transaction is undecided or another live process holds the claim.
    """
    celery_app = _app(app)
    token = uuid.uuid4().hex
    claim = tx.claim_dispatch(token, lease_ms)
    if claim.done:
        return True
    if not claim.granted:
        return False
    pending = list(claim.pending)
    done = not pending
    for start in range(0, len(pending), _BATCH):
        batch = pending[start : start + _BATCH]
        for participant in batch:
            sig = _handler_signature(celery_app, tx, claim.payload, participant, claim.outcome)
            # A deterministic id makes a resent handler recognisable in the result backend.
            sig.apply_async(task_id=f"{tx.id}:{participant}:{claim.outcome.value}")
        held, done = tx.record_dispatched(token, batch, lease_ms)
        if not held:
            log.warning("transaction %r: dispatch claim lost; another process continues", tx.id)
            return False
    if not pending:
        _, done = tx.record_dispatched(token, [], lease_ms)
    return done


def handler(func: Callable[P, R]) -> Callable[P, R | None]:
    """Make a commit/rollback handler run at most once per acked participant.

    The wrapped function receives ``tx_id``, ``participant`` and ``outcome`` keyword
    arguments. If the participant has already acked, it is skipped (returns None);
    after it returns, the participant is acked. A crash between the handler's effect
    and the ack runs it again: it must be idempotent. The transaction is found with
    the running task's app (its Redis and prefix; a ``tx_prefix`` keyword argument,
    which the wrapper removes, names another prefix).
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
        prefix = kwargs.pop(PREFIX_KWARG, None)
        tx_id, participant = str(kwargs["tx_id"]), str(kwargs["participant"])
        tx = transaction(tx_id, app=_running_app(), prefix=None if prefix is None else str(prefix))
        forced = _forced.get() == (tx.id, participant)
        if not forced and tx.status(participant).acked:
            return None
        result = func(*args, **kwargs)
        tx.ack(participant)
        return result

    return wrapper


def _watchdog(task: Task[Any, Any], tx_id: str, prefix: str | None = None) -> str:
    tx = transaction(tx_id, app=task.app, prefix=prefix)
    decision = tx.status()
    if not decision.decided:
        raise task.retry(countdown=decision.tally.remaining_ms / 1000 + _WATCHDOG_GRACE)
    if not dispatch(tx, app=task.app):
        raise task.retry(countdown=core.DEFAULT_CLAIM_LEASE_MS / 1000)
    return decision.outcome.value


def register_watchdog(app: Celery) -> None:
    """Register the watchdog task (callback mode's safety net) on ``app``; called by
    ``redisbreaker.celery.install``."""
    app.task(name=WATCHDOG_TASK, bind=True, max_retries=None, ignore_result=True)(_watchdog)
