"""The Celery app the transaction test workers load: the seed's SQLite tasks.

It is the demo's app (``redisbreaker.demo_transactions``); the broker URL comes from
``CELERY_BROKER_URL`` and the Redis for the tallies from ``REDISBREAKER_URL``.
"""

from __future__ import annotations

from redisbreaker.demo_transactions import (
    app,
    commit_rows,
    insert_blocking,
    rollback_rows,
    stage_rows,
)

__all__ = ["app", "commit_rows", "insert_blocking", "rollback_rows", "stage_rows"]
