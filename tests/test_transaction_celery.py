"""The seed's scenario through real Celery workers: 100 tasks, 100 SQLite databases."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from redisbreaker.celery.transactions import start_transaction
from redisbreaker.testing.workers import CeleryWorker
from redisbreaker.transaction import Outcome
from tests.support.seed_transactions import app, count_rows, insert_blocking, prepare, run_scenario

pytestmark = pytest.mark.celery


@pytest.fixture
def broker(redis_url: str) -> str:
    """The test Redis doubles as the broker; the producer app points at it."""
    app.conf.update(broker_url=redis_url)
    return redis_url


def _worker(url: str, pool: str, concurrency: int) -> CeleryWorker:
    return CeleryWorker(
        "tests.support.seed_transactions",
        broker_url=url,
        redisbreaker_url=url,
        pool=pool,
        concurrency=concurrency,
    )


def _dump(worker: CeleryWorker) -> str:
    return f"worker log:\n{worker.log()[-5000:]}"


def test_seed_blocking_mode(broker: str, r: redis.Redis, tmp_path: Path) -> None:
    """Blocking mode: #50 failing leaves all 100 databases empty; no failure fills all."""
    with _worker(broker, "threads", 100) as worker:
        failed = run_scenario("blocking", client=r, fail_at=50, db_dir=str(tmp_path / "a"))
        assert failed.decision.outcome is Outcome.ROLLBACK, _dump(worker)
        assert failed.decision.participant == "50"
        assert "ZeroDivisionError" in (failed.decision.reason or "")
        assert failed.counts == [(0, 0)] * 100
        assert failed.all_acked, _dump(worker)

        ok = run_scenario("blocking", client=r, fail_at=None, db_dir=str(tmp_path / "b"))
        assert ok.decision.outcome is Outcome.COMMIT, _dump(worker)
        assert ok.counts == [(3, 0)] * 100
        assert ok.all_acked


def test_seed_callback_mode(broker: str, r: redis.Redis, tmp_path: Path) -> None:
    """Callback mode on a 2-process pool: the handlers commit all or clean up all."""
    with _worker(broker, "prefork", 2) as worker:
        failed = run_scenario("callback", client=r, fail_at=50, db_dir=str(tmp_path / "a"))
        assert failed.decision.outcome is Outcome.ROLLBACK, _dump(worker)
        assert failed.all_acked, _dump(worker)
        assert failed.counts == [(0, 0)] * 100

        ok = run_scenario("callback", client=r, fail_at=None, db_dir=str(tmp_path / "b"))
        assert ok.decision.outcome is Outcome.COMMIT, _dump(worker)
        assert ok.all_acked, _dump(worker)
        assert ok.counts == [(3, 0)] * 100


def test_blocking_mode_with_too_few_slots(broker: str, r: redis.Redis, tmp_path: Path) -> None:
    """8 blocking participants on 3 slots deadlock until the deadline: a clean ROLLBACK
    whose reason says the workers had fewer slots than participants."""
    directory = str(tmp_path)
    prepare(directory, 8)
    with _worker(broker, "threads", 3) as worker:
        tx = start_transaction(
            [insert_blocking.s(directory, 2, None) for _ in range(8)], timeout=2, app=app, client=r
        )
        decision = tx.wait()
        assert decision.outcome is Outcome.ROLLBACK, _dump(worker)
        assert decision.reason_kind == "timeout"
        assert "fewer free worker slots than participants" in (decision.reason or "")
        end = tx.wait(30)
        assert end.outcome is Outcome.ROLLBACK
        for _ in range(600):
            if tx.status().tally.acked == 8:
                break
            time.sleep(0.05)
        assert tx.status().tally.acked == 8, _dump(worker)
        assert count_rows(directory, 8) == [(0, 0)] * 8
