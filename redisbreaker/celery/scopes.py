"""Scopes: which workers share a breaker, and what a pause stops.

The scope is part of the breaker's identity: a ``"worker"`` breaker of task ``t`` on
``celery@gpu1`` is the Redis breaker ``t|worker=celery@gpu1``. So it counts only that
worker's failures, and its open deadline (``until``, set by the script that trips it)
is the pause deadline of that worker: no second key has to agree with it.
"""

from __future__ import annotations

from typing import Final, Literal

from redisbreaker.errors import ConfigurationError
from redisbreaker.keys import MANUAL_PAUSE

Scope = Literal["worker", "host", "queue", "cluster"]
SCOPES: Final[tuple[str, ...]] = ("worker", "host", "queue", "cluster")

# The name manual pauses use for their breakers; no task can be called this, as Celery
# task names never contain "|".
MANUAL = MANUAL_PAUSE


def check_scope(what: str, value: object) -> Scope:
    if value not in SCOPES:
        raise ConfigurationError(f"{what} must be one of {list(SCOPES)}, got {value!r}")
    return value  # type: ignore[return-value]  # checked against SCOPES just above


def scoped_name(base: str, scope: str, key: str) -> str:
    """The Redis breaker name of ``base`` in ``scope`` for scope key ``key``."""
    if scope == "cluster":
        return base
    return f"{base}|{scope}={key}"


def resolve_pause(scope: object, pause: object) -> tuple[Scope, Scope | None]:
    """Validate ``scope=`` and ``pause=``; return (scope, pause scope or None).

    ``pause=True`` pauses the breaker's own scope. ``pause="queue"`` may go with any
    scope: the workers sharing the breaker stop only the task's queues. Any other
    pause scope must equal the breaker's scope: a breaker counting one worker's
    failures cannot decide for the whole cluster.
    """
    if pause is None or pause is False:
        return check_scope("scope", "cluster" if scope is None else scope), None
    if pause is True:
        real = check_scope("scope", "cluster" if scope is None else scope)
        return real, real
    wanted = check_scope("pause", pause)
    if scope is None:
        return wanted, wanted
    real = check_scope("scope", scope)
    if wanted != "queue" and wanted != real:
        raise ConfigurationError(
            f"pause={wanted!r} needs scope={wanted!r} (got scope={real!r}): the workers a "
            "pause reaches are those sharing the breaker; use pause='queue' to stop only "
            "the task's queues"
        )
    return real, wanted
