"""The seed's scenario for the tests: 100 Celery tasks each insert into their own SQLite
database; if any fails all roll back, and only if all succeed do all commit.

This module is the Celery app the test workers load
(``celery -A tests.support.seed_transactions worker``) and the driver
:func:`run_scenario`, which runs the scenario once through workers already running.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from celery import Celery

import redisbreaker.celery
from redisbreaker.celery.transactions import Mode, handler, staged, start_transaction, transaction
from redisbreaker.config import SyncClient
from redisbreaker.transaction import Decision

app = Celery("tests.support.seed_transactions")
app.conf.update(
    broker_url=os.environ.get("CELERY_BROKER_URL"),
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
redisbreaker.celery.install(app)


def db_path(db_dir: str, participant: str | int) -> Path:
    return Path(db_dir) / f"db{int(participant):03d}.sqlite"


def _connect(db_dir: str, participant: str | int) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT/ROLLBACK ourselves.
    return sqlite3.connect(db_path(db_dir, participant), timeout=30, isolation_level=None)


def prepare(db_dir: str, n: int) -> None:
    """Create ``n`` empty databases, each with a ``rows`` and a ``staged`` table."""
    Path(db_dir).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        conn = _connect(db_dir, i)
        conn.execute("CREATE TABLE IF NOT EXISTS rows (tx TEXT, value TEXT)")
        conn.execute("CREATE TABLE IF NOT EXISTS staged (tx TEXT, value TEXT)")
        conn.execute("DELETE FROM rows")
        conn.execute("DELETE FROM staged")
        conn.close()


def count_rows(db_dir: str, n: int) -> list[tuple[int, int]]:
    """Per database: (committed rows, staged rows)."""
    out = []
    for i in range(n):
        conn = _connect(db_dir, i)
        rows = conn.execute("SELECT count(*) FROM rows").fetchone()[0]
        staged_rows = conn.execute("SELECT count(*) FROM staged").fetchone()[0]
        conn.close()
        out.append((int(rows), int(staged_rows)))
    return out


def _the_seeds_failure(fail_at: int | None, participant: str) -> None:
    if fail_at is not None:
        5 / (fail_at - int(participant))  # ZeroDivisionError for participant #fail_at


@app.task(name="seed.insert_blocking")
def insert_blocking(
    db_dir: str, rows: int, fail_at: int | None, *, tx_id: str, participant: str
) -> str:
    """Blocking mode: keep the database transaction open while the vote is decided."""
    conn = _connect(db_dir, participant)
    try:
        conn.execute("BEGIN IMMEDIATE")
        with transaction(tx_id).participate(
            participant,
            commit=lambda: conn.execute("COMMIT"),
            rollback=lambda: conn.execute("ROLLBACK"),
        ) as p:
            for k in range(rows):
                conn.execute("INSERT INTO rows VALUES (?, ?)", (tx_id, f"row {k}"))
            _the_seeds_failure(fail_at, participant)
        assert p.decision is not None
        return p.decision.outcome.value
    finally:
        conn.close()


@app.task(name="seed.stage_rows")
def stage_rows(
    db_dir: str, rows: int, fail_at: int | None, *, tx_id: str, participant: str
) -> None:
    """Callback mode: stage the rows (durably), vote, return."""
    with staged(tx_id, participant, app=app):
        conn = _connect(db_dir, participant)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for k in range(rows):
                conn.execute("INSERT INTO staged VALUES (?, ?)", (tx_id, f"row {k}"))
            conn.execute("COMMIT")
        finally:
            conn.close()
        _the_seeds_failure(fail_at, participant)


def _commit_rows(db_dir: str, *, tx_id: str, participant: str, outcome: str) -> None:
    # Idempotent: the move and the delete are one SQLite transaction.
    conn = _connect(db_dir, participant)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO rows SELECT tx, value FROM staged WHERE tx = ?", (tx_id,))
        conn.execute("DELETE FROM staged WHERE tx = ?", (tx_id,))
        conn.execute("COMMIT")
    finally:
        conn.close()


def _rollback_rows(db_dir: str, *, tx_id: str, participant: str, outcome: str) -> None:
    conn = _connect(db_dir, participant)
    try:
        conn.execute("DELETE FROM staged WHERE tx = ?", (tx_id,))
    finally:
        conn.close()


commit_rows = app.task(name="seed.commit_rows")(handler(_commit_rows))
rollback_rows = app.task(name="seed.rollback_rows")(handler(_rollback_rows))


@dataclass(frozen=True)
class ScenarioResult:
    mode: str
    participants: int
    fail_at: int | None
    decision: Decision
    counts: list[tuple[int, int]]  # per database: (committed rows, staged rows)
    seconds_to_decision: float
    all_acked: bool

    @property
    def with_rows(self) -> int:
        return sum(1 for rows, _ in self.counts if rows)

    @property
    def empty(self) -> int:
        return sum(1 for rows, st in self.counts if rows == 0 and st == 0)

    def summary(self) -> str:
        failing = f"participant #{self.fail_at} fails" if self.fail_at is not None else "no failure"
        return (
            f"{self.mode:8} {self.participants} tasks, {failing:22} -> "
            f"{self.decision.outcome.value.upper():8} in {self.seconds_to_decision:5.2f}s; "
            f"databases with rows: {self.with_rows}, empty: {self.empty}\n"
            f"         reason: {self.decision.describe()}"
        )


def run_scenario(
    mode: Mode,
    *,
    client: SyncClient,
    participants: int = 100,
    fail_at: int | None = 50,
    rows: int = 3,
    timeout: float = 30.0,
    db_dir: str | None = None,
) -> ScenarioResult:
    """Run the seed's scenario once through workers that are already running."""
    directory = db_dir or tempfile.mkdtemp(prefix="rb-tx-demo-")
    prepare(directory, participants)
    started = time.monotonic()
    if mode == "blocking":
        sigs = [insert_blocking.s(directory, rows, fail_at) for _ in range(participants)]
        tx = start_transaction(sigs, timeout=timeout, app=app, client=client)
    else:
        sigs = [stage_rows.s(directory, rows, fail_at) for _ in range(participants)]
        tx = start_transaction(
            sigs,
            timeout=timeout,
            mode="callback",
            on_commit=commit_rows.s(directory),
            on_rollback=rollback_rows.s(directory),
            app=app,
            client=client,
        )
    decision = tx.wait()
    took = time.monotonic() - started
    # The commits and rollbacks follow the decision; the acks say when they are done.
    all_acked = _until(lambda: tx.status().tally.acked >= participants, timeout + 30)
    return ScenarioResult(
        mode,
        participants,
        fail_at,
        decision,
        count_rows(directory, participants),
        took,
        all_acked,
    )


def _until(check: Callable[[], bool], limit: float) -> bool:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.05)
    return check()
