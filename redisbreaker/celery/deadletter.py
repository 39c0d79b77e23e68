"""Dead letters and attempt history for Celery tasks, in Redis, for every broker.

With ``app.conf.redisbreaker_dead_letter = True``:

* **attempt history**: every attempt of a task that has failed at least once (its
  worker, when it ended by the Redis clock, how long it ran, the outcome, the
  exception, the retry countdown chosen) is recorded under the task id, with a TTL. A
  task that succeeds at its first try writes nothing. ``attempts(task_id)`` reads it.
* **dead letters**: a task that fails for good (an exception with no retry left, a
  task without retries, ``Reject(requeue=False)``, a time limit or a lost worker that
  is not requeued) is written to its queue's stream, as the broker delivered it (body,
  headers, properties, exchange, routing key), with the exception, traceback, worker,
  time and attempts. The write happens in the worker's main process *before* the
  message is acknowledged: with ``acks_late`` a worker killed mid-way leaves the
  message in the broker (it is delivered again, and the write is idempotent per task
  id) or in the store, never in neither. If the write fails (Redis down), the message
  is put back in the queue instead of being acknowledged.
* A task refused because its breaker is open (``CircuitOpenError``) is not a failure
  and is never dead-lettered.

Each queue's entries are one stream with a cap (``redisbreaker_dead_letter_maxlen``,
default 10,000; entries dropped by the cap are counted). :class:`DeadLetters` lists,
shows, replays (republishes the original message to its original exchange and routing
key, retry count reset) and purges; the ``redisbreaker dlq`` command does the same.
"""

from __future__ import annotations

import logging
import time
import traceback
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import msgpack
from billiard.einfo import ExceptionWithTraceback  # type: ignore[attr-defined]  # (no stub)
from celery import Celery, signals
from celery.exceptions import (
    Ignore,
    Reject,
    Retry,
    Terminated,
    TimeLimitExceeded,
    WorkerLostError,
)
from celery.worker.request import Request

from redisbreaker import scripts
from redisbreaker.celery.settings import settings_for
from redisbreaker.errors import STORAGE_ERRORS, CircuitOpenError, ConfigurationError, StorageError
from redisbreaker.keys import DEFAULT_PREFIX, KeySpace
from redisbreaker.outage import describe, diagnose
from redisbreaker.state import text_of

log = logging.getLogger("redisbreaker.celery")

# How long a replayer holds an entry while it publishes it (then another may retry).
REPLAY_LEASE_MS = 30_000
# The message properties a replay sends again (AMQP's basic properties).
MESSAGE_PROPERTIES = frozenset({
    "correlation_id", "reply_to", "priority", "delivery_mode", "expiration", "message_id",
    "user_id", "app_id", "type", "timestamp",
})  # fmt: skip
# What an entry's message and traceback are cut to, so one entry stays small.
MAX_TEXT = 2_000
MAX_TRACEBACK = 16_000


# -- attempts --------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One run of a task: where, when it ended (Redis clock, ms), how long, how it ended
    (``retry``, ``failed``, ``succeeded``), the exception and the retry countdown."""

    worker: str
    ended_ms: int
    runtime_s: float
    outcome: str
    retries: int
    exc_type: str = ""
    exc_message: str = ""
    countdown_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _attempt_key(prefix: str, task_id: str) -> str:
    return KeySpace.of(prefix, "att", task_id).key("a")


def _decode_attempt(raw: Any) -> Attempt | None:
    text = raw if isinstance(raw, bytes) else str(raw).encode()
    stamp, sep, blob = text.partition(b"|")
    if not sep:
        return None
    try:
        worker, runtime, outcome, retries, exc_type, message, countdown = msgpack.unpackb(
            blob, raw=False
        )
        return Attempt(str(worker), int(stamp), float(runtime), str(outcome), int(retries),
                       str(exc_type), str(message),
                       None if countdown is None else float(countdown))  # fmt: skip
    except (ValueError, TypeError, msgpack.UnpackException):
        return None


def attempts(task_id: str, app: Celery | None = None) -> list[Attempt]:
    """Every recorded attempt of ``task_id``, oldest first ([] if it never failed)."""
    conf = settings_for(_app(app))
    try:
        raw = conf.client().lrange(_attempt_key(conf.prefix, task_id), 0, -1)
    except STORAGE_ERRORS as exc:
        raise StorageError(f"attempts of {task_id!r}: {diagnose(exc)}") from exc
    return [a for a in map(_decode_attempt, raw) if a is not None]


def _record_attempt(
    app: Celery, task_id: str, worker: str, runtime: float, outcome: str, retries: int,
    exc: BaseException | None, countdown: float | None,
) -> None:  # fmt: skip
    conf = settings_for(app)
    blob = msgpack.packb([worker, round(runtime, 6), outcome, retries,
                          type(exc).__name__ if exc is not None else "",
                          _cut(_safe_str(exc), MAX_TEXT) if exc is not None else "",
                          countdown])  # fmt: skip
    try:
        client = conf.client()
        script = scripts.for_client(client, "attempt_add")
        script(keys=[_attempt_key(conf.prefix, task_id)],
               args=["", round(conf.attempts_ttl * 1000), blob])  # fmt: skip
    except STORAGE_ERRORS as exc:  # history is best effort: the task's outcome stands
        log.warning("redisbreaker: attempt of %s not recorded: %s", task_id, describe(exc))


def _safe_str(exc: object) -> str:
    try:
        return str(exc)
    except Exception:
        return ""


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# The attempt history is written by the process that runs the task (a pool child),
# from Celery's own signals: only for tasks that have failed at least once. The
# receivers are connected when a worker of an app with dead letters starts
# (use_dead_letter_requests): Celery sends task_success only if someone listens, and
# a receiver costs every task of every app about 2 µs.
_started: dict[str, float] = {}


def _enabled(task: Any) -> bool:
    app = getattr(task, "app", None)
    return bool(app is not None and settings_for(app).dead_letter and getattr(
        task, "dead_letter", True))  # fmt: skip


def _on_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task_id and task is not None and _enabled(task):
        _started[task_id] = time.monotonic()


def _finish(task: Any, outcome: str, exc: BaseException | None, countdown: float | None) -> None:
    request = task.request
    task_id = str(request.id)
    started = _started.pop(task_id, None)
    runtime = time.monotonic() - started if started is not None else 0.0
    if outcome == "succeeded" and not request.retries:
        return  # never failed: nothing to write
    _record_attempt(task.app, task_id, str(request.hostname or ""), runtime, outcome,
                    int(request.retries or 0), exc, countdown)  # fmt: skip


def _on_retry(sender: Any = None, request: Any = None, reason: Any = None, **_: Any) -> None:
    if sender is None or not _enabled(sender):
        return
    exc = reason.exc if isinstance(reason, Retry) and reason.exc is not None else reason
    when = reason.when if isinstance(reason, Retry) else None
    countdown = when if isinstance(when, int | float) else (
        (when - datetime.now(when.tzinfo)).total_seconds() if isinstance(when, datetime) else None
    )  # fmt: skip
    _finish(sender, "retry", exc, countdown)


def _on_failure(sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
    if sender is not None and _enabled(sender) and not isinstance(exception, CircuitOpenError):
        _finish(sender, "failed", exception, None)


def _on_success(sender: Any = None, **_: Any) -> None:
    if sender is not None and _enabled(sender):
        _finish(sender, "succeeded", None, None)


# -- dead letters -------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetter:
    """One task that failed for good, as the broker delivered it."""

    entry_id: str  # "<queue>/<stream id>"
    queue: str
    task: str
    task_id: str
    time_ms: int  # when it was dead-lettered (Redis clock)
    worker: str
    reason: str  # "failed", "rejected", "time limit", "worker lost"
    exc_type: str
    exc_message: str
    traceback: str
    exchange: str
    routing_key: str
    body: bytes = field(repr=False)
    headers: dict[str, Any] = field(repr=False)
    properties: dict[str, Any] = field(repr=False)
    content_type: str = ""
    content_encoding: str = ""
    attempts: list[Attempt] = field(default_factory=list)
    replaying: bool = False  # a replay holds it (or died holding it)

    def as_dict(self, *, full: bool = False) -> dict[str, Any]:
        out = asdict(self)
        out["attempts"] = [a.as_dict() for a in self.attempts]
        out["args"], out["kwargs"] = self.arguments()
        for key in ("body", "headers", "properties") if not full else ("body",):
            out.pop(key)
        if not full:
            out.pop("traceback")
        return out

    def arguments(self) -> tuple[Any, Any]:
        """(args, kwargs) as sent, when the body is JSON (Celery's default)."""
        if self.content_type != "application/json":
            return None, None
        import json

        try:
            body = json.loads(self.body)
            return body[0], body[1]
        except (ValueError, TypeError, IndexError, KeyError):
            return None, None


def _keys(prefix: str, queue: str) -> list[str]:
    ks = KeySpace.of(prefix, "dlq", queue)
    return [ks.key("s"), ks.key("i"), ks.key("n"), ks.key("c")]


class DeadLetters:
    """The dead-letter store of one app (its Redis and prefix: the integration's rule),
    or of a Redis and prefix given directly (then it can list and purge, not replay:
    a replay publishes through the app's broker)."""

    def __init__(
        self, app: Celery | None = None, *, client: Any = None, prefix: str | None = None
    ) -> None:
        self.app = app if app is not None or client is not None else _app(None)
        if self.app is not None:
            conf = settings_for(self.app)
            client = client if client is not None else conf.client()
            prefix = prefix if prefix is not None else conf.prefix
        self.client = client
        self.prefix = prefix if prefix is not None else DEFAULT_PREFIX
        self.maxlen = settings_for(self.app).dead_letter_maxlen if self.app is not None else 10_000

    def _script(self, name: str) -> Any:
        return scripts.for_client(self.client, name)

    # -- writing -----------------------------------------------------------------

    def add(self, queue: str, fields: dict[str, Any]) -> tuple[str, bool]:
        """Store one entry (``fields`` must hold ``id``, the task id); idempotent per task
        id. Returns (entry id, whether it was new)."""
        flat: list[Any] = []
        for k, v in fields.items():
            flat += [k, v]
        try:
            entry, added = self._script("dlq_add")(
                keys=_keys(self.prefix, queue),
                args=["", self.maxlen, fields["id"], *flat],
            )
        except STORAGE_ERRORS as exc:
            raise StorageError(f"dead letter of {fields['id']!r}: {diagnose(exc)}") from exc
        return f"{queue}/{text_of(entry)}", bool(added)

    # -- reading -----------------------------------------------------------------

    def queues(self) -> list[str]:
        head, tail = f"{self.prefix}dlq{{", "}:s"
        from redisbreaker.fleet import Fleet, unescape_tag

        found = []
        for key in Fleet(self.client, self.prefix).scan("dlq{*}:s"):  # (every primary)
            if key.startswith(head) and key.endswith(tail):
                name = unescape_tag(key[len(head) : -len(tail)])
                found.append(name if isinstance(name, str) else name.decode("utf-8", "replace"))
        return sorted(found)

    def stats(self) -> dict[str, dict[str, int]]:
        """Per queue: entries now, and added, dropped (by the cap), replayed, purged."""
        out = {}
        for q in self.queues():
            s_key, _, n_key, _ = _keys(self.prefix, q)
            try:
                length = int(self.client.xlen(s_key))
                counts = {text_of(k): int(v) for k, v in self.client.hgetall(n_key).items()}
            except STORAGE_ERRORS as exc:
                raise StorageError(f"dead-letter stats: {diagnose(exc)}") from exc
            kinds = ("added", "dropped", "replayed", "purged")
            out[q] = {"entries": length, **{k: counts.get(k, 0) for k in kinds}}
        return out

    def entries(self, queue: str | None = None, task: str | None = None) -> list[DeadLetter]:
        """Every entry (of ``queue``, of ``task``), oldest first."""
        out: list[DeadLetter] = []
        for q in [queue] if queue else self.queues():
            s_key, _, _, c_key = _keys(self.prefix, q)
            try:
                rows = self.client.xrange(s_key)
                claimed = {text_of(k) for k in self.client.hkeys(c_key)}
            except STORAGE_ERRORS as exc:
                raise StorageError(f"dead letters of {q!r}: {diagnose(exc)}") from exc
            for sid, fields in rows:
                entry = _entry(q, text_of(sid), fields, text_of(sid) in claimed)
                if task is None or entry.task == task:
                    out.append(entry)
        return out

    def get(self, entry_id: str) -> DeadLetter:
        queue, sid = _split(entry_id)
        s_key = _keys(self.prefix, queue)[0]
        try:
            rows = self.client.xrange(s_key, sid, sid)
        except STORAGE_ERRORS as exc:
            raise StorageError(f"dead letter {entry_id!r}: {diagnose(exc)}") from exc
        if not rows:
            raise UnknownDeadLetterError(f"no dead letter {entry_id!r}")
        return _entry(queue, sid, rows[0][1], False)

    # -- replay and purge ---------------------------------------------------------

    def replay(self, entry_ids: Iterable[str], *, new_id: bool = False) -> list[str]:
        """Republish each entry's message to its exchange and routing key (retry count
        reset; the same task id unless ``new_id``), then remove it. Returns the task ids
        sent. An entry another replayer holds is skipped; a replay interrupted between
        publishing and removing leaves the entry (a later replay sends it again: a
        message can be duplicated, never lost)."""
        if self.app is None:
            raise ConfigurationError(
                "a replay publishes through the Celery app's broker: give the app (-A)"
            )
        sent = []
        for entry_id in entry_ids:
            task_id = self._replay_one(entry_id, new_id)
            if task_id is not None:
                sent.append(task_id)
        return sent

    def _replay_one(self, entry_id: str, new_id: bool) -> str | None:
        queue, sid = _split(entry_id)
        keys = _keys(self.prefix, queue)
        token = uuid.uuid4().hex
        try:
            reply = self._script("dlq_claim")(keys=keys, args=["", sid, token, REPLAY_LEASE_MS])
        except STORAGE_ERRORS as exc:
            raise StorageError(f"replay of {entry_id!r}: {diagnose(exc)}") from exc
        code = text_of(reply[0])
        if code == "gone":
            return None
        if code == "busy":
            log.warning("dead letter %s: another replay holds it; skipped", entry_id)
            return None
        entry = _entry(queue, sid, reply[1:], True)
        assert self.app is not None  # replay() checked
        task_id = _publish(self.app, entry, new_id)
        try:
            self._script("dlq_remove")(keys=keys, args=["", "replayed", token, sid])
        except STORAGE_ERRORS as exc:
            raise StorageError(
                f"replay of {entry_id!r} sent task {task_id} but could not remove the entry "
                f"({describe(exc)}); a later replay would send it again"
            ) from exc
        return task_id

    def purge(self, entry_ids: Sequence[str]) -> int:
        """Remove entries without replaying them; how many were removed."""
        by_queue: dict[str, list[str]] = {}
        for entry_id in entry_ids:
            queue, sid = _split(entry_id)
            by_queue.setdefault(queue, []).append(sid)
        removed = 0
        for queue, sids in by_queue.items():
            for start in range(0, len(sids), 500):
                try:
                    removed += int(self._script("dlq_remove")(
                        keys=_keys(self.prefix, queue),
                        args=["", "purged", "", *sids[start : start + 500]],
                    ))  # fmt: skip
                except STORAGE_ERRORS as exc:
                    raise StorageError(f"purge of {queue!r}: {diagnose(exc)}") from exc
        return removed


class UnknownDeadLetterError(ConfigurationError, LookupError):
    """No dead-letter entry has that id."""


def _split(entry_id: str) -> tuple[str, str]:
    queue, sep, sid = entry_id.rpartition("/")
    if not sep or not queue or not sid:
        raise ConfigurationError(f"dead-letter id {entry_id!r}: expected <queue>/<stream id>")
    return queue, sid


def _unpack(value: Any) -> Any:
    try:
        return msgpack.unpackb(value, raw=False) if value else {}
    except (ValueError, TypeError, msgpack.UnpackException):
        return {}


def _entry(queue: str, sid: str, fields: Any, replaying: bool) -> DeadLetter:
    """An entry from XRANGE (a dict of fields) or a script (a flat list of pairs)."""
    pairs = (
        fields.items() if isinstance(fields, dict) else zip(fields[::2], fields[1::2], strict=False)
    )
    f = {text_of(k): v for k, v in pairs}

    def text(key: str) -> str:
        return text_of(f.get(key, b""))

    raw_attempts = _unpack(f.get("attempts"))
    attempt_list = [a for a in map(_decode_attempt, raw_attempts or []) if a is not None]
    body = f.get("body", b"")
    return DeadLetter(
        entry_id=f"{queue}/{sid}", queue=queue, task=text("task"), task_id=text("id"),
        time_ms=int(text("time") or 0), worker=text("worker"), reason=text("reason"),
        exc_type=text("exc_type"), exc_message=text("exc_message"),
        traceback=text("traceback"), exchange=text("exchange"),
        routing_key=text("routing_key"),
        body=body if isinstance(body, bytes) else str(body).encode(),
        headers=_unpack(f.get("headers")), properties=_unpack(f.get("properties")),
        content_type=text("content_type"), content_encoding=text("content_encoding"),
        attempts=attempt_list, replaying=replaying,
    )  # fmt: skip


def _publish(app: Celery, entry: DeadLetter, new_id: bool) -> str:
    """Send ``entry``'s message again, as it was, to where it was sent."""
    headers = dict(entry.headers)
    properties = dict(entry.properties)
    task_id = uuid.uuid4().hex if new_id else entry.task_id
    if "retries" in headers:
        headers["retries"] = 0
    if new_id:
        headers["id"] = task_id
        properties["correlation_id"] = task_id
    # Only the AMQP message properties: not a transport's own (delivery info and tag,
    # body encoding) nor what is given apart (content type and encoding, headers).
    kept = {k: v for k, v in properties.items() if k in MESSAGE_PROPERTIES and v is not None}
    with app.producer_or_acquire() as producer:
        producer.publish(
            entry.body, exchange=entry.exchange, routing_key=entry.routing_key,
            headers=headers, content_type=entry.content_type or None,
            content_encoding=entry.content_encoding or None, retry=True, **kept,
        )  # fmt: skip
    return task_id


def _app(app: Celery | None) -> Celery:
    if app is not None:
        return app
    from celery import current_app

    return current_app


# -- the worker side: dead-lettering before the ack ------------------------------------------


def _why_final(request: Request, exc: BaseException) -> str | None:
    """Why this failure is final (the message will not run again), or None."""
    task: Any = request.task  # (celery-types lacks some of these attributes)
    if isinstance(exc, Terminated | Retry | Ignore | CircuitOpenError):
        return None
    if isinstance(exc, Reject):
        return None if getattr(exc, "requeue", False) else "rejected"
    if isinstance(exc, WorkerLostError):
        if task.acks_late and task.reject_on_worker_lost:
            return None  # requeued
        return "worker lost"
    if isinstance(exc, TimeLimitExceeded):
        return None if task.acks_late and not task.acks_on_timeout else "time limit"
    return "failed"


class DeadLetterRequest(Request):
    """A Celery request that dead-letters a final failure before its message is acked."""

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> Any:
        exc = exc_info.exception
        if isinstance(exc, ExceptionWithTraceback):  # (how a pool child sends it back)
            exc = exc.exc
        why = _why_final(self, exc) if isinstance(exc, BaseException) else None
        if why is not None and getattr(self.task, "dead_letter", True):
            try:
                dead_letter(self, exc, exc_info, why)
            except StorageError as error:
                log.error(
                    "redisbreaker: %s[%s] failed for good but its dead letter could not be "
                    "written (%s); its message goes back to the queue", self.name, self.id, error,
                )  # fmt: skip
                if self.task.acks_late:
                    return self.reject(requeue=True)
        return super().on_failure(exc_info, send_failed_event=send_failed_event,
                                  return_ok=return_ok)  # fmt: skip


def dead_letter(request: Request, exc: BaseException, exc_info: Any, why: str) -> tuple[str, bool]:
    """Write ``request``'s message and failure to its queue's dead-letter stream."""
    message = request.message  # the kombu message, as the broker delivered it
    app = request.task.app
    store = DeadLetters(app)
    info = dict(message.delivery_info or {})
    queue = str(info.get("routing_key") or app.conf.task_default_queue)
    task_id = str(request.id)
    try:
        history = store.client.lrange(_attempt_key(store.prefix, task_id), 0, -1)
    except STORAGE_ERRORS:
        history = []
    trace = getattr(exc_info, "traceback", "") or "".join(traceback.format_exception(exc))
    fields = {
        "id": task_id, "task": request.name, "queue": queue, "reason": why,
        "worker": str(request.hostname or ""), "exc_type": type(exc).__name__,
        "exc_message": _cut(_safe_str(exc), MAX_TEXT), "traceback": _cut(trace, MAX_TRACEBACK),
        "exchange": str(info.get("exchange") or ""),
        "routing_key": str(info.get("routing_key") or ""),
        "body": message.body if isinstance(message.body, bytes) else str(message.body).encode(),
        "headers": msgpack.packb(dict(message.headers or {}), default=str),
        "properties": msgpack.packb(dict(message.properties or {}), default=str),
        "content_type": str(message.content_type or ""),
        "content_encoding": str(message.content_encoding or ""),
        "attempts": msgpack.packb(list(history)),
    }  # fmt: skip
    entry, added = store.add(queue, fields)
    if added:
        log.warning("redisbreaker: %s[%s] dead-lettered as %s (%s: %s)", request.name, task_id,
                    entry, type(exc).__name__, _cut(_safe_str(exc), 200))  # fmt: skip
    return entry, added


_RECEIVERS = (
    (signals.task_prerun, _on_prerun), (signals.task_retry, _on_retry),
    (signals.task_failure, _on_failure), (signals.task_success, _on_success),
)  # fmt: skip


def _listen() -> None:
    """Connect the attempt history's receivers (once: Celery keys them by identity)."""
    for signal, receiver in _RECEIVERS:
        signal.connect(receiver, weak=False)


def use_dead_letter_requests(app: Celery) -> None:
    """Give every task of ``app`` that may be dead-lettered the request class above, and
    start recording attempts (called by ``install`` when the worker starts, before its
    consumer builds task strategies and tracers)."""
    if not settings_for(app).dead_letter:
        return
    _listen()
    for task in app.tasks.values():
        if getattr(task, "dead_letter", True) and task.Request == Request.__module__ + ":Request":
            # Celery takes a class as well as its dotted path (symbol_by_name).
            task.Request = DeadLetterRequest  # type: ignore[assignment]


__all__ = [
    "Attempt",
    "DeadLetter",
    "DeadLetterRequest",
    "DeadLetters",
    "UnknownDeadLetterError",
    "attempts",
    "dead_letter",
]
