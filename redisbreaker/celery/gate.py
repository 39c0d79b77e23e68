"""The consumption gate: a consumer bootstep that stops fetching while a breaker is open.

It pauses by cancelling the task consumer's queues and resumes by consuming them
again, with the same calls as Celery's ``cancel_consumer``/``add_consumer`` control
commands (``Consumer.cancel_task_queue`` / ``add_task_queue``). That works on every
transport (no ``qos.can_consume`` patch) and loses nothing: a message the Redis
transport had already popped for a cancelled queue is requeued by kombu.

Threads: a gate thread does all Redis I/O (one ``gate_claim`` script call per watched
breaker per ``poll_interval``, sooner when pub/sub reports a transition or a pause
deadline passes) and computes which queues should be paused. The consumer applies
that on its own thread, from a timer tick that does no I/O. After a broker
reconnect, ``start`` runs again before the event loop consumes, and re-applies it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
from celery import bootsteps, signals

from redisbreaker.breaker import SharedBreaker
from redisbreaker.celery.scopes import MANUAL, scoped_name
from redisbreaker.celery.settings import settings_for
from redisbreaker.celery.task import ATTR, BreakerSpec, task_queues
from redisbreaker.durability import eviction_risk, marker_watch
from redisbreaker.errors import STORAGE_ERRORS, StorageError
from redisbreaker.fleet import split_name
from redisbreaker.keys import KeySpace
from redisbreaker.options import OutagePolicy
from redisbreaker.outage import describe, rate_limited
from redisbreaker.state import Transition

logger = logging.getLogger("redisbreaker.celery")

# How often the consumer thread looks at what the gate thread decided (no I/O).
TICK = 0.1


@dataclass(eq=False)
class Watch:
    """One breaker this worker obeys, and what its last claim said."""

    breaker: SharedBreaker
    queues: frozenset[str] | None  # None: every queue this worker consumes
    mode: str  # 'trial' (a task's breaker) or 'manual' (a manual pause)
    action: str = "resume"
    generation: int = -1  # of the breaker, as the last claim reported
    deadline: float = 0.0  # monotonic end of the wait the last claim reported
    next_poll: float = 0.0
    dirty: bool = True


@dataclass(frozen=True)
class PauseDecision:
    """What the gate thread decided: queues to pause, queues open for one trial."""

    paused: frozenset[str] = frozenset()
    trial: frozenset[str] = frozenset()
    epoch: int = 0  # bumped each time a trial begins


@dataclass(eq=False)
class GateController:
    """The gate of one worker: its watches, the gate thread, and the applied pause."""

    consumer: Any
    watches: list[Watch] = field(default_factory=list)
    queues: list[str] = field(default_factory=list)  # consumed when nothing is paused
    decision: PauseDecision = field(default_factory=PauseDecision)
    applied: frozenset[str] = frozenset()
    _wake: threading.Event = field(default_factory=threading.Event)
    _stopped: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None
    _tick: Any = None
    _epoch: int = 0
    _trial_taken: int = -1  # the epoch whose trial message this worker has received
    # For the heartbeat: the server's clock as last seen (server ms, local monotonic s),
    # and since when (server ms) and by whom each paused queue is paused.
    _clock: tuple[int, float] = (0, 0.0)
    _paused_since: dict[str, int] = field(default_factory=dict)
    _paused_by: dict[str, str] = field(default_factory=dict)
    _next_beat: float = 0.0

    def __post_init__(self) -> None:
        c = self.consumer
        self.app = c.app
        self.settings = settings_for(self.app)
        self.worker_id = str(c.hostname)
        self.lease_ms = max(2000, round(self.settings.poll_interval * 5000))
        self.queues = [q.name for q in c.task_consumer.queues]
        client = self.settings.client()
        self.watches = self._build_watches()
        for watch in self.watches:
            watch.breaker.subscribe(self._make_listener(watch))
            try:
                watch.breaker.connect()  # joins the pub/sub hub now, without a round trip
            except StorageError as exc:  # no Cluster node up yet: the polls will retry
                rate_limited.warning("gate", "redisbreaker gate: %s", exc)
        signals.task_received.connect(self._on_received, weak=False)
        warning = eviction_risk(client)
        if warning:
            logger.warning(warning)
        logger.info(
            "redisbreaker gate: %s watches %d breaker(s) over queues %s",
            self.worker_id, len(self.watches), self.queues,
        )  # fmt: skip

    # -- what to watch ----------------------------------------------------------------

    def _build_watches(self) -> list[Watch]:
        watches: list[Watch] = []
        consumed = set(self.queues)
        for name, task in sorted(self.app.tasks.items()):
            spec: BreakerSpec | None = getattr(task, ATTR, None)
            if spec is None or spec.pause is None:
                continue
            routed = [q for q in task_queues(self.app, name) if q in consumed]
            stop = None if spec.pauses_all_queues else frozenset(routed)
            if stop is not None and not stop:
                continue  # this worker does not consume the queues it would pause
            if spec.scope == "queue":
                for q in routed:
                    only = stop if stop is None else frozenset({q})
                    watches.append(Watch(spec.breaker(q), only, "trial"))
                continue
            key = {"worker": self.worker_id, "host": self.settings.hostname}.get(spec.scope, "")
            watches.append(Watch(spec.breaker(key), stop, "trial"))
        host = self.settings.hostname
        manual: list[tuple[str, str, frozenset[str] | None]] = [
            ("cluster", "", None), ("host", host, None), ("worker", self.worker_id, None)
        ]  # fmt: skip
        manual += [("queue", q, frozenset({q})) for q in self.queues]
        for scope, key, stop in manual:
            watches.append(Watch(manual_breaker(self.app, scope, key), stop, "manual"))
        return watches

    def _make_listener(self, watch: Watch) -> Any:
        def on_transition(transition: Transition) -> None:
            # Runs on the pub/sub thread: only mark and wake; the gate thread asks Redis.
            watch.dirty = True
            self._wake.set()

        return on_transition

    # -- the gate thread (all Redis I/O) ---------------------------------------------

    def poll_all(self, *, force: bool = False) -> None:
        now = time.monotonic()
        for watch in self.watches:
            if force or watch.dirty or now >= watch.next_poll:
                self._poll(watch, now)
        self._decide()
        if force or now >= self._next_beat:
            self._beat(now)

    def _beat(self, now: float) -> None:
        """Publish this worker's heartbeat: its queues and which are paused, since when
        (server clock) and by which breaker. It expires if the worker stops writing it."""
        interval = self.settings.poll_interval
        self._next_beat = now + interval
        server_ms, seen_at = self._clock
        server_now = server_ms + round((now - seen_at) * 1000) if server_ms else 0
        with self._lock:
            paused = set(self.decision.paused)
        for q in list(self._paused_since):
            if q not in paused:
                del self._paused_since[q]
        beat = {
            "worker": self.worker_id, "host": self.settings.hostname, "pid": os.getpid(),
            "queues": self.queues, "at": server_now,
            "paused": {
                q: {"since_ms": self._paused_since.setdefault(q, server_now),
                    "by": self._paused_by.get(q, "")}
                for q in sorted(paused)
            },
        }  # fmt: skip
        ttl_ms = round(max(3 * interval, 5.0) * 1000)
        key = KeySpace.of(self.settings.prefix, "gate", self.worker_id).key("hb")
        client = self.settings.client()
        try:
            client.set(key, msgpack.packb(beat), px=ttl_ms)
            # Did Redis lose the data set? (logs at ERROR once if so)
            marker_watch(client, self.settings.prefix).check(client)
        except STORAGE_ERRORS as exc:
            rate_limited.warning("gate-beat", "redisbreaker gate: heartbeat not written (%s)",
                                 describe(exc))  # fmt: skip

    def _poll(self, watch: Watch, now: float) -> None:
        watch.dirty = False
        interval = self.settings.poll_interval
        try:
            verdict = watch.breaker.claim_gate(self.worker_id, self.lease_ms, watch.mode)
        except StorageError as exc:
            rate_limited.warning(
                "gate", "redisbreaker gate: Redis error (%s); keeping the pause state", exc,
            )  # fmt: skip
            watch.next_poll = now + interval
            fail_closed = watch.breaker.options.on_outage is OutagePolicy.FAIL_CLOSED
            if watch.action == "wait" and watch.deadline and now > watch.deadline:
                watch.action = "wait" if fail_closed else "resume"
            return
        action, ms = verdict.action, verdict.ms
        self._clock = (verdict.server_ms, now)
        lost = verdict.generation < watch.generation and watch.action == "wait"
        if lost and self._pause_lost(watch, now):
            return  # put back: the next poll reads it
        watch.generation = verdict.generation
        if action != watch.action:
            logger.info(
                "redisbreaker gate: %s: %s -> %s (%s)",
                self.worker_id, watch.breaker.name, action, f"{ms} ms" if ms else "-",
            )  # fmt: skip
        if action == "trial" and watch.action != "trial":
            self._epoch += 1
        watch.action = action
        if action == "wait" and ms > 0:
            watch.deadline = now + ms / 1000.0
            # Ask again right at the deadline: that is when the trial lease is taken.
            watch.next_poll = now + min(interval, ms / 1000.0 + 0.005)
        else:
            watch.deadline = 0.0
            watch.next_poll = now + interval

    def _pause_lost(self, watch: Watch, now: float) -> bool:
        """Redis lost the state of a breaker that keeps this worker paused (its
        generation went back: evicted, or the data set was lost). Say so at ERROR; a
        manual pause is an operator's decision that nothing has reversed, so put it back
        as it was (until resume(), or for the time it had left). True if put back."""
        name = watch.breaker.name
        if watch.mode != "manual":
            logger.error(
                "redisbreaker gate: %s: the state of breaker %r is gone from Redis while it "
                "kept this worker paused (evicted, or Redis lost its data; see "
                "docs/redis.md); it starts again closed", self.worker_id, name,
            )  # fmt: skip
            return False
        left = watch.deadline - now if watch.deadline else None
        if left is not None and left <= 0:
            return False  # it was ending anyway
        reason = f"put back by {self.worker_id}: Redis lost this pause"
        try:
            if left is None:
                watch.breaker.force_open(reason=reason)
            else:
                watch.breaker.open(left, reason=reason)
        except StorageError as exc:
            logger.error("redisbreaker gate: %s: could not put back the pause %r (%s)",
                         self.worker_id, name, exc)  # fmt: skip
            return False
        logger.error(
            "redisbreaker gate: %s: Redis lost the manual pause %r (evicted, or Redis lost "
            "its data; see docs/redis.md); put it back %s", self.worker_id, name,
            "until resume()" if left is None else f"for the {left:.1f}s it had left",
        )  # fmt: skip
        watch.dirty = True
        watch.generation = -1
        return True

    def _decide(self) -> None:
        paused: set[str] = set()
        trial: set[str] = set()
        by: dict[str, str] = {}
        for watch in self.watches:
            queues = self.queues if watch.queues is None else watch.queues
            if watch.action == "wait":
                paused.update(queues)
                name, scope, key = split_name(watch.breaker.name)
                label = name if scope == "cluster" else f"{name} [{scope} {key}]"
                by.update((q, label) for q in queues if q not in by)
            elif watch.action == "trial":
                trial.update(queues)
        self._paused_by = by
        with self._lock:
            self.decision = PauseDecision(frozenset(paused), frozenset(trial - paused), self._epoch)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self.poll_all()
            except Exception:
                logger.exception("redisbreaker gate: poll failed")
            now = time.monotonic()
            soonest = min((w.next_poll for w in self.watches), default=now + 1.0)
            self._wake.wait(max(0.01, min(soonest - now, self.settings.poll_interval)))
            self._wake.clear()

    def start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="redisbreaker-gate",
                                            daemon=True)  # fmt: skip
            self._thread.start()

    def close(self) -> None:
        self._stopped.set()
        self._wake.set()

    # -- the consumer thread (no I/O of ours) -------------------------------------------

    def on_consumer_start(self, c: Any) -> None:
        """Called by the bootstep before the event loop consumes: (re-)apply the pause."""
        self.consumer = c
        paused = self._wanted()
        current = {q.name for q in c.task_consumer.queues}
        for q in self.queues:
            if q in paused:
                c.cancel_task_queue(q)
            elif q not in current:
                # Deselected by an earlier pause whose resume the lost connection never
                # saw: add it back; the event loop's first consume() starts it.
                known = self.app.amqp.queues
                if q in known:
                    c.task_consumer.add_queue(known.select_add(known[q]))
        self.applied = paused
        if paused:
            logger.warning("redisbreaker gate: %s starts paused on %s", self.worker_id,
                           sorted(paused))  # fmt: skip
        self._cancel_tick()
        self._tick = c.timer.call_repeatedly(TICK, self._on_tick)

    def on_consumer_stop(self) -> None:
        self._cancel_tick()

    def _cancel_tick(self) -> None:
        if self._tick is not None:
            with contextlib.suppress(Exception):
                self._tick.cancel()
            self._tick = None

    def _wanted(self) -> frozenset[str]:
        with self._lock:
            d = self.decision
        # A trial takes one message: once it is in, the trial queues pause again
        # until the breaker closes (all resume) or re-opens (the next trial).
        return d.paused | d.trial if d.epoch == self._trial_taken else d.paused

    def _on_received(self, sender: Any = None, **_: Any) -> None:
        # Runs on the consumer's thread, for each message it takes.
        if sender is not self.consumer:
            return
        d = self.decision  # (replaced whole by the gate thread: one read sees one)
        if not (d.paused or d.trial or self.applied):
            return  # nothing paused and nothing to undo: each message of a healthy worker
        if d.trial and self._trial_taken != d.epoch:
            self._trial_taken = d.epoch
        if self._wanted() != self.applied:
            self.apply()

    def _on_tick(self) -> None:
        if self._wanted() == self.applied and not self._overridden():
            return
        c = self.consumer
        if c.hub is not None:
            self.apply()  # the hub fires timers on the consumer's thread
        else:
            c.call_soon(self.apply)  # a threaded timer: hand over to the consumer

    def _overridden(self) -> frozenset[str]:
        """Queues this gate paused that the consumer consumes again (someone ran
        ``celery control add_consumer``, which knows nothing of the breaker)."""
        if not self.applied:
            return frozenset()
        tc = self.consumer.task_consumer
        if tc is None:
            return frozenset()
        return self.applied & {q.name for q in tc.queues}

    def apply(self) -> None:
        c = self.consumer
        if c.task_consumer is None:
            return
        wanted = self._wanted()
        for q in sorted(self._overridden() & wanted):
            logger.warning(
                "redisbreaker gate: %s: queue %s was resumed from outside (add_consumer?) "
                "while its breaker keeps it paused; pausing it again. To end a pause, use "
                "redisbreaker.celery.resume(...) (or reset the breaker).", self.worker_id, q,
            )  # fmt: skip
            c.cancel_task_queue(q)
        for q in self.queues:
            if q in wanted and q not in self.applied:
                logger.warning("redisbreaker gate: %s pauses queue %s", self.worker_id, q)
                c.cancel_task_queue(q)
            elif q not in wanted and q in self.applied:
                logger.warning("redisbreaker gate: %s resumes queue %s", self.worker_id, q)
                c.add_task_queue(q)
        self.applied = wanted


class ConsumptionGate(bootsteps.StartStopStep):
    """Consumer bootstep: pause consumption while a watched breaker is open."""

    label = "redisbreaker gate"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        self.controller: GateController | None = None
        super().__init__(parent, **kwargs)

    def start(self, parent: Any) -> None:
        if self.controller is None:
            self.controller = GateController(parent)
            # One synchronous poll at start-up, so a worker starting while its breaker
            # is open never fetches a message.
            self.controller.poll_all(force=True)
            self.controller.start_thread()
        self.controller.on_consumer_start(parent)

    def stop(self, parent: Any) -> None:
        if self.controller is not None:
            self.controller.on_consumer_stop()

    def shutdown(self, parent: Any) -> None:
        if self.controller is not None:
            self.controller.on_consumer_stop()
            self.controller.close()


def manual_breaker(app: Any, scope: str, key: str) -> SharedBreaker:
    """The breaker standing for a manual pause of ``scope`` (key: node, host or queue)."""
    conf = settings_for(app)
    cache: dict[tuple[str, str, int], SharedBreaker] = app.__dict__.setdefault(
        "_redisbreaker_manual", {}
    )
    slot = (scope, key, os.getpid())
    found = cache.get(slot)
    if found is None:
        found = SharedBreaker(
            scoped_name(MANUAL, scope, key), client=conf.client(), prefix=conf.prefix,
            fail_max=1, reset_timeout=1.0,
        )  # fmt: skip
        cache[slot] = found
    return found
