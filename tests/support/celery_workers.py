"""Real Celery worker processes for tests: see :mod:`redisbreaker.testing_workers`.

Re-exported here so tests and ``make demo`` share one launcher.
"""

from __future__ import annotations

from redisbreaker.testing_workers import READY_MARKER, CeleryWorker, WorkerStartError

__all__ = ["READY_MARKER", "CeleryWorker", "WorkerStartError"]
