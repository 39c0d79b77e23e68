"""A Celery app for callback-mode tests: one SQLite database per participant.

Redis is configured only as the broker (``CELERY_BROKER_URL``): no
``redisbreaker_url`` and no ``REDISBREAKER_URL``, so breakers, transactions,
handlers and the watchdog all find it by the last rule (the broker URL).
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import redis
from celery import Celery

import redisbreaker.celery
from redisbreaker.celery.transactions import handler, staged, transaction

app = Celery("tests.support.callback_app")
app.conf.update(
    broker_url=os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0"),
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
)
redisbreaker.celery.install(app)


def connect(db_dir: str, participant: str) -> sqlite3.Connection:
    path = Path(db_dir) / f"db{int(participant):03d}.sqlite"
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.execute("CREATE TABLE IF NOT EXISTS staged (tx TEXT, value TEXT)")
    conn.execute("CREATE TABLE IF NOT EXISTS rows (tx TEXT, value TEXT)")
    return conn


def counts(db_dir: str, n: int) -> list[tuple[int, int]]:
    """Per participant database: (committed rows, staged rows)."""
    out = []
    for i in range(n):
        conn = connect(db_dir, str(i))
        rows = conn.execute("SELECT count(*) FROM rows").fetchone()[0]
        st = conn.execute("SELECT count(*) FROM staged").fetchone()[0]
        conn.close()
        out.append((int(rows), int(st)))
    return out


def bookkeeping() -> redis.Redis:
    """The test's own notes, in the broker's Redis."""
    return redis.Redis.from_url(app.conf.broker_url)


def _until(check: Any, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not check() and time.monotonic() < deadline:
        time.sleep(0.02)


@app.task(name="tests.stage")
def stage(
    db_dir: str,
    fail_after: int | None = None,
    hold: bool = False,
    *,
    tx_id: str,
    participant: str,
) -> None:
    """Stage one row.

    ``fail_after=k``: vote no, once ``k`` other participants are inside their bodies.
    ``hold``: enter the body, then stage only once the transaction is decided and this
    participant's rollback handler has run and acked: the order in which a stage that
    races the decision would strand its rows. Every run ends by noting itself in
    ``done:<tx_id>``.
    """
    notes = bookkeeping()
    try:
        with staged(tx_id, participant):
            notes.incr(f"entered:{tx_id}")
            if fail_after is not None:
                _until(lambda: int(notes.get(f"entered:{tx_id}") or 0) > fail_after)
                raise RuntimeError(f"participant {participant} fails")
            if hold:
                tx = transaction(tx_id)
                _until(lambda: tx.status(participant).acked)
            conn = connect(db_dir, participant)
            try:
                conn.execute("INSERT INTO staged VALUES (?, ?)", (tx_id, "row"))
            finally:
                conn.close()
    finally:
        notes.sadd(f"done:{tx_id}", participant)


@app.task(name="tests.commit")
@handler
def commit(db_dir: str, *, tx_id: str, participant: str, outcome: str) -> None:
    conn = connect(db_dir, participant)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO rows SELECT tx, value FROM staged WHERE tx = ?", (tx_id,))
        conn.execute("DELETE FROM staged WHERE tx = ?", (tx_id,))
        conn.execute("COMMIT")
    finally:
        conn.close()


@app.task(name="tests.rollback")
@handler
def rollback(db_dir: str, *, tx_id: str, participant: str, outcome: str) -> None:
    conn = connect(db_dir, participant)
    try:
        conn.execute("DELETE FROM staged WHERE tx = ?", (tx_id,))
    finally:
        conn.close()
