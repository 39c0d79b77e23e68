"""Celery integration: ``install(app)``, ``@shared_breaker``, and manual ``pause``/``resume``.

See docs/celery.md. In short::

    app = Celery(broker="redis://localhost:6379/0")
    redisbreaker.celery.install(app)

    @shared_breaker(scope="worker", pause="worker", fail_max=3, reset_timeout=60,
                    retry_on_failure=True)
    @app.task(acks_late=True, max_retries=None)
    def render(job_id): ...
"""

from __future__ import annotations

from typing import Any

try:
    from celery import signals
except ImportError as missing:  # pragma: no cover - the message is the point
    raise ImportError(
        "redisbreaker.celery needs Celery: pip install 'redisbreaker[celery]'"
    ) from missing

from redisbreaker.breaker_core import set_process_label
from redisbreaker.celery.censor import censor_settings
from redisbreaker.celery.deadletter import (
    Attempt,
    DeadLetter,
    DeadLetters,
    attempts,
    use_dead_letter_requests,
)
from redisbreaker.celery.gate import ConsumptionGate, manual_breaker
from redisbreaker.celery.scopes import SCOPES, Scope, check_scope
from redisbreaker.celery.settings import Settings, mark_installed, settings_for
from redisbreaker.celery.task import ON_OPEN, BreakerSpec, OnOpen, shared_breaker
from redisbreaker.celery.transactions import register_watchdog
from redisbreaker.errors import ConfigurationError
from redisbreaker.options import open_seconds
from redisbreaker.state import Snapshot

__all__ = [
    "Attempt",
    "DeadLetter",
    "DeadLetters",
    "attempts",
    "install",
    "shared_breaker",
    "pause",
    "resume",
    "ConsumptionGate",
    "Settings",
    "BreakerSpec",
    "Scope",
    "OnOpen",
    "SCOPES",
    "ON_OPEN",
]


censor_settings()


def install(app: Any) -> None:
    """Set up everything the integration needs on ``app``, in every process that loads
    it (workers and producers): the consumption gate (a consumer bootstep, for
    ``pause=``), per-process Redis clients after fork, and the transaction watchdog
    task (callback mode's safety net). Calling it twice is harmless.

    Settings are read from ``app.conf`` (``redisbreaker_*``) on first use.
    """
    if not mark_installed(app):
        return
    app.steps["consumer"].add(ConsumptionGate)
    register_watchdog(app)

    def on_process_init(**_: Any) -> None:
        # A prefork child must not share its parent's sockets: make its own client now.
        settings_for(app).client()

    def on_worker_setup(sender: Any = None, **_: Any) -> None:
        # Reasons recorded by this worker's calls name the worker, not only the host.
        set_process_label(str(sender))
        # Before the consumer builds its task strategies: dead-letter final failures.
        use_dead_letter_requests(app)

    signals.worker_process_init.connect(on_process_init, weak=False)
    signals.celeryd_after_setup.connect(on_worker_setup, weak=False)


def _key(app: Any, scope: Scope, queue: str | None, worker: str | None, host: str | None) -> str:
    if scope == "worker":
        if not worker:
            raise ConfigurationError("scope='worker' needs worker='<node name>', e.g. celery@gpu1")
        return worker
    if scope == "host":
        return host or settings_for(app).hostname
    if scope == "queue":
        if not queue:
            raise ConfigurationError("scope='queue' needs queue='<queue name>'")
        return queue
    return ""


def pause(
    app: Any,
    *,
    scope: Scope = "cluster",
    seconds: float | None = None,
    queue: str | None = None,
    worker: str | None = None,
    host: str | None = None,
    reason: str | None = None,
) -> Snapshot:
    """Pause consumption in ``scope`` for ``seconds`` (or until :func:`resume`).

    ``scope='queue'`` stops ``queue`` on every worker consuming it; ``'worker'`` stops
    every queue of node ``worker``; ``'host'`` every worker whose ``redisbreaker_hostname``
    is ``host``; ``'cluster'`` every worker. Workers react within about a second.
    ``reason`` is recorded with the pause (operators see it with who paused and when).
    """
    check_scope("scope", scope)
    if seconds is not None:
        seconds = open_seconds(seconds, "pause(seconds)")
    breaker = manual_breaker(app, scope, _key(app, scope, queue, worker, host))
    if seconds is None:
        return breaker.force_open(reason=reason)
    return breaker.open(seconds, reason=reason)


def resume(
    app: Any,
    *,
    scope: Scope = "cluster",
    queue: str | None = None,
    worker: str | None = None,
    host: str | None = None,
    reason: str | None = None,
) -> Snapshot:
    """End a manual pause of ``scope`` now (automatic pauses end with their breakers)."""
    check_scope("scope", scope)
    return manual_breaker(app, scope, _key(app, scope, queue, worker, host)).reset(reason=reason)
