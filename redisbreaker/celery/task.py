"""``shared_breaker``: a Celery task whose body runs through a ``SharedBreaker``.

Apply it above ``@app.task``. The task's ``run`` is wrapped (the worker's tracer calls
``task.run``), so the task keeps its class, name, options and signature. The breaker
objects are made lazily in the process that runs the task (after fork), one per scope
key, because the key (worker node name, queue) is only known from the request.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar, Unpack

from celery import signals
from celery.exceptions import Ignore, Reject, Retry

from redisbreaker import forking
from redisbreaker.breaker import SharedBreaker
from redisbreaker.celery.scopes import Scope, resolve_pause, scoped_name
from redisbreaker.celery.settings import is_installed, settings_for
from redisbreaker.errors import CircuitOpenError, ConfigurationError
from redisbreaker.options import BreakerSettings, options_from

logger = logging.getLogger("redisbreaker.celery")

OnOpen = Literal["retry", "reject", "fail", "skip"]
ON_OPEN: Final[tuple[str, ...]] = ("retry", "reject", "fail", "skip")
ATTR: Final = "__redisbreaker__"

# Celery's control flow: a task that retries, rejects or ignores itself did not fail.
CELERY_CONTROL_FLOW: Final[tuple[type[BaseException], ...]] = (Retry, Reject, Ignore)

T = TypeVar("T")

# Proxies of tasks not created yet (app not finalized) that are already wrapped: their
# objects cannot carry attributes, and touching them would create the task too early.
# The proxies are kept alive here so that an id is never reused by another proxy.
_wrapped_proxies: dict[int, Any] = {}
_wrapped_lock = threading.Lock()


@dataclass
class BreakerSpec:
    """How one task is guarded; attached to the task as ``task.__redisbreaker__``."""

    name: str | None
    scope: Scope
    pause: Scope | None
    on_open: OnOpen
    count_open_retries: bool
    retry_on_failure: bool
    failure_countdown: float
    settings: dict[str, Any]
    task_name: str = ""
    app: Any = None
    _breakers: dict[tuple[int, str], SharedBreaker] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def base_name(self) -> str:
        return self.name or self.task_name

    @property
    def pauses_all_queues(self) -> bool:
        return self.pause is not None and self.pause != "queue"

    def options(self) -> dict[str, Any]:
        opts = dict(self.settings)
        ignore = opts.get("ignore", ())
        ignore = (ignore,) if not isinstance(ignore, list | tuple | set | frozenset) else ignore
        opts["ignore"] = (*tuple(ignore), *CELERY_CONTROL_FLOW)
        if "on_outage" not in opts and self.app is not None:
            policy = settings_for(self.app).on_outage
            if policy is not None:
                opts["on_outage"] = policy
        return opts

    def breaker(self, key: str) -> SharedBreaker:
        """This process's breaker for scope key ``key`` (new after fork)."""
        # Every task asks: the fork epoch, not os.getpid() (a system call), and a lookup
        # without the lock (a dict read is atomic; only a miss creates, under the lock).
        slot = (forking.epoch, key)
        found = self._breakers.get(slot)
        if found is not None:
            return found
        with self._lock:
            found = self._breakers.get(slot)
            if found is None:
                if len(self._breakers) and next(iter(self._breakers))[0] != slot[0]:
                    self._breakers.clear()  # inherited across fork: their clients are not ours
                conf = settings_for(self.app)
                found = SharedBreaker(
                    scoped_name(self.base_name, self.scope, key),
                    client=conf.client(),
                    prefix=conf.prefix,
                    **self.options(),
                )
                self._breakers[slot] = found
            return found

    def scope_key(self, task: Any, request: Any) -> str:
        if self.scope == "worker":
            return str(request.hostname or settings_for(self.app).hostname)
        if self.scope == "host":
            return settings_for(self.app).hostname
        if self.scope == "queue":
            info = request.delivery_info or {}
            return str(info.get("routing_key") or task_queues(self.app, self.task_name)[0])
        return ""

    # -- running the task -----------------------------------------------------------

    def execute(
        self, task: Any, original: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        request = task.request
        if self.pause is not None and not is_installed(self.app):
            _warn_not_installed(self.app, self.task_name)
        breaker = self.breaker(self.scope_key(task, request))
        try:
            return breaker.call(original, *args, **kwargs)
        except CircuitOpenError as exc:
            if exc.name != breaker.name:
                raise  # another breaker inside the task refused: that is the task's failure
            return self.refused(task, request, args, kwargs, exc)
        except CELERY_CONTROL_FLOW:
            raise
        except Exception as exc:
            if self.retry_on_failure and breaker.options.outcome(exc, 0.0).failed:
                # Re-sent, not lost: with a paused scope it runs on a worker that can
                # succeed. It counts against max_retries like any Celery retry.
                raise task.retry(exc=exc, countdown=self.failure_countdown) from exc
            raise

    def refused(
        self,
        task: Any,
        request: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        exc: CircuitOpenError,
    ) -> Any:
        policy = self.on_open
        if policy == "fail":
            raise exc
        if policy == "skip":
            logger.warning("redisbreaker: %s[%s] skipped: %s", task.name, request.id, exc)
            return None
        if policy == "reject":
            raise Reject(exc, requeue=True)
        # A worker- or host-scoped breaker speaks for this worker only: another worker
        # can run the task now, so it goes back at once (plus jitter). For the queue
        # and cluster scopes nobody can run it before the breaker's deadline.
        local = self.scope in ("worker", "host")
        countdown = self.open_countdown(0.0 if local else exc.retry_after)
        if self.count_open_retries or request.called_directly or request.is_eager:
            raise task.retry(exc=exc, countdown=countdown)
        # Re-send with the same retries count: an open circuit says nothing about the
        # task, so it should not use up the task's own max_retries.
        sig = task.signature_from_request(
            request, args, kwargs, countdown=countdown, retries=request.retries
        )
        sig.apply_async()
        raise Retry(exc=exc, when=countdown, sig=sig)  # type: ignore[arg-type]  # stubs say Real

    def open_countdown(self, retry_after: float) -> float:
        conf = settings_for(self.app)
        countdown = retry_after + random.uniform(0.0, conf.retry_jitter)
        if conf.visibility_timeout is not None:
            # A countdown task waits un-acked in a worker; past the visibility timeout
            # the Redis broker would deliver it a second time.
            countdown = min(countdown, conf.visibility_timeout * 0.5)
        return round(max(countdown, 0.0), 3)


_warned_apps: weakref.WeakSet[Any] = weakref.WeakSet()


def _warn_not_installed(app: Any, task_name: str) -> None:
    if app in _warned_apps:
        return
    _warned_apps.add(app)
    logger.warning(
        "redisbreaker: task %r has pause= but redisbreaker.celery.install(app) was not "
        "called: no worker stops fetching while its breaker is open (calls are still "
        "refused). Call install(app) where the app is defined.",
        task_name,
    )


@signals.celeryd_after_setup.connect(weak=False)
def _gate_missing(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """At worker start-up (logging is set up by then): an ERROR if tasks need the gate
    and the app has none."""
    app = getattr(instance, "app", None)
    if app is None or is_installed(app):
        return
    paused = sorted(
        name for name, task in app.tasks.items() if getattr(task, ATTR, None) is not None
        and getattr(task, ATTR).pause is not None
    )  # fmt: skip
    if paused:
        logger.error(
            "redisbreaker: tasks %s declare pause= but redisbreaker.celery.install(app) was "
            "not called on this app: this worker will keep fetching while their breakers "
            "are open. Call redisbreaker.celery.install(app) where the app is defined.",
            paused,
        )


def task_queues(app: Any, task_name: str) -> list[str]:
    """The queue names ``task_name`` is routed to by default."""
    route = app.amqp.router.route({}, task_name)
    queue = route.get("queue")
    name = getattr(queue, "name", queue)
    return [str(name or app.conf.task_default_queue)]


def spec_of(task: Any) -> BreakerSpec | None:
    """The :class:`BreakerSpec` ``shared_breaker`` attached to ``task``, if any."""
    return getattr(task, ATTR, None)


def _is_proxy(obj: object) -> bool:
    from celery.local import PromiseProxy

    # type(), not isinstance(): a proxy forwards __class__ and would create the task.
    return issubclass(type(obj), PromiseProxy)


def _attach(task: Any, spec: BreakerSpec) -> None:
    if getattr(task, ATTR, None) is not None:
        raise ConfigurationError(f"task {task.name!r} is already wrapped by shared_breaker")
    if spec.on_open == "reject" and not task.acks_late:
        raise ConfigurationError(
            f"task {task.name!r}: on_open='reject' needs acks_late=True (else the message "
            "is acknowledged before the task runs and a reject cannot return it)"
        )
    spec.task_name = task.name
    spec.app = task._get_app()
    original = task.run

    @functools.wraps(original)
    def run(*args: Any, **kwargs: Any) -> Any:
        return spec.execute(task, original, args, kwargs)

    task.run = run
    setattr(task, ATTR, spec)


def shared_breaker(
    name: str | None = None,
    *,
    scope: Scope | None = None,
    pause: Scope | bool | None = None,
    on_open: OnOpen = "retry",
    count_open_retries: bool = False,
    retry_on_failure: bool = False,
    failure_countdown: float = 0.0,
    **settings: Unpack[BreakerSettings],
) -> Callable[[T], T]:
    """Guard a Celery task with a :class:`~redisbreaker.SharedBreaker`; apply above
    ``@app.task``. See docs/celery.md for scopes, pauses and the open policies.

    Every argument is validated here, so a mistake fails at import time.
    """
    real_scope, pause_scope = resolve_pause(scope, pause)
    if on_open not in ON_OPEN:
        raise ConfigurationError(f"on_open must be one of {list(ON_OPEN)}, got {on_open!r}")
    if name is not None and (not isinstance(name, str) or not name or "|" in name):
        raise ConfigurationError(f"name must be a non-empty str without '|', got {name!r}")
    if isinstance(failure_countdown, bool) or not isinstance(failure_countdown, int | float):
        raise ConfigurationError(f"failure_countdown must be a number, got {failure_countdown!r}")
    options_from(settings)  # validates every breaker option now

    def decorate(task: T) -> T:
        spec = BreakerSpec(
            name=name, scope=real_scope, pause=pause_scope, on_open=on_open,
            count_open_retries=count_open_retries, retry_on_failure=retry_on_failure,
            failure_countdown=float(failure_countdown), settings=dict(settings),
        )  # fmt: skip
        if _is_proxy(task):
            if task.__evaluated__():  # type: ignore[attr-defined]  # Celery's Proxy API, untyped
                _attach(task, spec)
                return task
            with _wrapped_lock:
                if id(task) in _wrapped_proxies:
                    raise ConfigurationError("this task is already wrapped by shared_breaker")
                _wrapped_proxies[id(task)] = task
            opts = object.__getattribute__(task, "_Proxy__kwargs")
            if on_open == "reject" and opts.get("acks_late") is False:
                raise ConfigurationError(
                    "on_open='reject' needs acks_late=True, but the task sets acks_late=False"
                )
            # The task is created when the app is finalized; wrap it then.
            proxy: Any = task  # Celery's Proxy API is untyped
            proxy.__then__(lambda: _attach(proxy._get_current_object(), spec))
            return task
        if not hasattr(task, "run") or not hasattr(task, "request"):
            raise ConfigurationError(
                f"shared_breaker wraps a Celery task: apply it above @app.task, got {task!r}"
            )
        _attach(task, spec)
        return task

    return decorate
