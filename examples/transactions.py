"""100 Celery tasks each write to their own database: all commit, or all roll back.

Runs both modes with real workers, once with participant #50 failing and once with no
failure, and prints what each database holds afterwards:

* blocking: each task keeps its database transaction open inside ``participate``,
  votes, waits for the decision, then commits or rolls back (one worker slot per
  participant: a threads pool of 100);
* callback: each task stages its rows durably inside ``staged`` and returns; the
  decision sends one commit or rollback handler per participant.

    python examples/transactions.py

uses ``REDISBREAKER_URL`` or a private redis-server. See docs/transactions.md.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from pathlib import Path

from celery import Celery

import redisbreaker.celery
from redisbreaker.celery.transactions import handler, staged, start_transaction, transaction

app = Celery("transactions", broker=os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0"))
app.conf.update(task_ignore_result=True, worker_prefetch_multiplier=1)
redisbreaker.celery.install(app)


def database(data: str, participant: str) -> sqlite3.Connection:
    conn = sqlite3.connect(Path(data) / f"db{int(participant):03}.sqlite", isolation_level=None)
    conn.execute("CREATE TABLE IF NOT EXISTS rows (tx TEXT, value INTEGER)")
    conn.execute("CREATE TABLE IF NOT EXISTS staged (tx TEXT, value INTEGER)")
    return conn


def work(participant: str, fail_at: int | None) -> int:
    if fail_at is not None and int(participant) == fail_at:
        raise RuntimeError(f"database {participant} is full")
    return int(participant)


@app.task(name="example.insert")
def insert(data: str, fail_at: int | None, *, tx_id: str, participant: str) -> None:
    conn = database(data, participant)
    conn.execute("BEGIN IMMEDIATE")
    with transaction(tx_id).participate(
        participant, commit=lambda: conn.execute("COMMIT"),
        rollback=lambda: conn.execute("ROLLBACK"),
    ):  # fmt: skip
        conn.execute("INSERT INTO rows VALUES (?, ?)", (tx_id, work(participant, fail_at)))


@app.task(name="example.stage")
def stage(data: str, fail_at: int | None, *, tx_id: str, participant: str) -> None:
    with staged(tx_id, participant):
        value = work(participant, fail_at)
        database(data, participant).execute("INSERT INTO staged VALUES (?, ?)", (tx_id, value))


@app.task(name="example.commit")
@handler
def commit(data: str, *, tx_id: str, participant: str, outcome: str) -> None:
    conn = database(data, participant)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO rows SELECT * FROM staged WHERE tx = ?", (tx_id,))
    conn.execute("DELETE FROM staged WHERE tx = ?", (tx_id,))
    conn.execute("COMMIT")


@app.task(name="example.rollback")
@handler
def rollback(data: str, *, tx_id: str, participant: str, outcome: str) -> None:
    database(data, participant).execute("DELETE FROM staged WHERE tx = ?", (tx_id,))


def scenario(mode: str, fail_at: int | None, n: int = 100) -> str:
    data = tempfile.mkdtemp(prefix=f"rb-{mode}-")
    if mode == "blocking":
        tx = start_transaction([insert.s(data, fail_at) for _ in range(n)], timeout=60, app=app)
    else:
        tx = start_transaction(
            [stage.s(data, fail_at) for _ in range(n)], timeout=60, mode="callback",
            on_commit=commit.s(data), on_rollback=rollback.s(data), app=app,
        )  # fmt: skip
    decision = tx.wait()
    deadline = time.monotonic() + 60
    while tx.status().tally.acked < n and time.monotonic() < deadline:
        time.sleep(0.05)  # the commits and rollbacks follow the decision
    with_rows = sum(
        1 for i in range(n) if database(data, str(i)).execute("SELECT 1 FROM rows").fetchone()
    )
    failing = f"#{fail_at} fails" if fail_at is not None else "no failure"
    return (f"{mode:8} {failing:10} -> {decision.outcome.value.upper():8} "
            f"databases with rows: {with_rows:3} of {n}")  # fmt: skip


def main() -> None:
    from redisbreaker.testing import CeleryWorker
    from redisbreaker.testing.servers import embedded_url

    with embedded_url() as url:
        app.conf.update(broker_url=url)
        env = {"PYTHONPATH": str(Path(__file__).parent)}
        for mode, pool in (("blocking", "threads"), ("callback", "prefork")):
            size = 100 if mode == "blocking" else 2
            with CeleryWorker("transactions", broker_url=url, pool=pool, concurrency=size,
                              env=env):  # fmt: skip
                for fail_at in (50, None):
                    print(scenario(mode, fail_at))


if __name__ == "__main__":
    main()
