"""Issue #10: the Celery integration has one configuration, strands no data, and says
when it is misconfigured. Real workers on a Redis broker where it matters."""

from __future__ import annotations

import asyncio
import logging
import types
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.exceptions import Retry

import redisbreaker.aio
import redisbreaker.celery
from redisbreaker import CircuitOpenError, ConfigurationError, SharedBreaker, Transaction
from redisbreaker import config as rb_config
from redisbreaker.celery import shared_breaker, transactions
from redisbreaker.celery.settings import Settings, settings_for
from redisbreaker.celery.task import spec_of
from redisbreaker.celery.transactions import WATCHDOG_TASK, start_transaction
from redisbreaker.testing.workers import CeleryWorker
from redisbreaker.transaction import Outcome
from tests.support import callback_app
from tests.support.celery_apps.helpers import namespace, sender, wait_for, wait_log, worker


def _url(base: str, db: int) -> str:
    return base.rsplit("/", 1)[0] + f"/{db}"


# -- 1. callback mode strands nothing, in either order ---------------------------------------


@pytest.fixture
def broker_only(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test Redis as the Celery broker and nothing else: no REDISBREAKER_URL, no
    configure(), no redisbreaker_url."""
    monkeypatch.delenv(rb_config.ENV_URL, raising=False)
    callback_app.app.conf.update(broker_url=redis_url)
    if hasattr(callback_app.app, "_redisbreaker_settings"):
        delattr(callback_app.app, "_redisbreaker_settings")
    return redis_url


def _callback_worker(url: str) -> CeleryWorker:
    # No redisbreaker_url: the worker must find Redis through its broker URL.
    return CeleryWorker(
        "tests.support.callback_app", broker_url=url, pool="threads", concurrency=30,
        env={rb_config.ENV_URL: ""},
    )  # fmt: skip


def _run_orphan_scenario(tmp_path: Path, r: redis.Redis, *, race: bool) -> tuple[Any, Any]:
    n = 12
    db_dir = str(tmp_path)
    sigs = []
    for i in range(n):
        if i == 0:
            sigs.append(callback_app.stage.s(db_dir, fail_after=n - 1 if race else 0))
        elif race:
            sigs.append(callback_app.stage.s(db_dir, hold=True))
        else:  # sent now, run after the ROLLBACK and its handlers
            sigs.append(callback_app.stage.s(db_dir).set(countdown=2))
    tx = start_transaction(
        sigs, timeout=60, mode="callback", app=callback_app.app,
        on_commit=callback_app.commit.s(db_dir), on_rollback=callback_app.rollback.s(db_dir),
    )  # fmt: skip
    decision = tx.wait(60)
    wait_for("every stage task to end", lambda: r.scard(f"done:{tx.id}") == n, 90)
    wait_for("every participant to ack", lambda: tx.status().tally.acked == n, 30)
    return decision, callback_app.counts(db_dir, n)


def test_callback_stage_after_its_rollback_handler_stages_nothing(
    broker_only: str, r: redis.Redis, tmp_path: Path
) -> None:
    """Participant 0 fails at once; the other 11 stage tasks run 2 s later, after their
    rollback handlers ran and acked: they skip their bodies and no database keeps a row.
    Redis is configured only as the broker."""
    with _callback_worker(broker_only) as w:
        decision, counts = _run_orphan_scenario(tmp_path, r, race=False)
        assert decision.outcome is Outcome.ROLLBACK, w.log()[-3000:]
        assert counts == [(0, 0)] * 12, w.log()[-3000:]
        assert w.log().count("not staged") == 11, w.log()[-3000:]


def test_callback_stage_that_races_the_decision_is_undone(
    broker_only: str, r: redis.Redis, tmp_path: Path
) -> None:
    """The forced race: 11 stages are inside their bodies when participant 0 votes no;
    each stages only after its rollback handler ran and acked, so its vote comes late;
    staged() runs its rollback handler itself: no database keeps a row."""
    with _callback_worker(broker_only) as w:
        decision, counts = _run_orphan_scenario(tmp_path, r, race=True)
        assert decision.outcome is Outcome.ROLLBACK, w.log()[-3000:]
        assert counts == [(0, 0)] * 12, w.log()[-3000:]
        assert w.log().count("staged after the decision") == 11, w.log()[-3000:]


# -- 2 and 3. one rule for where Redis is, for every part -------------------------------------


def _conf_app(**conf: Any) -> Celery:
    app = Celery(f"coherence{uuid.uuid4().hex[:6]}", set_as_current=False)
    app.conf.update(**conf)
    return app


def _db(client: Any) -> int:
    return int(client.connection_pool.connection_kwargs.get("db", 0))


def test_settings_follow_one_rule(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """app.conf.redisbreaker_url > configure()/REDISBREAKER_URL > the broker URL; the
    prefix: redisbreaker_prefix > configure(prefix=)/REDISBREAKER_PREFIX > "rb:"."""
    monkeypatch.delenv(rb_config.ENV_URL, raising=False)
    broker = _url(redis_url, 1)
    only_broker = Settings.from_conf(_conf_app(broker_url=broker).conf)
    assert _db(only_broker.client()) == 1
    assert only_broker.prefix == "rb:"
    monkeypatch.setenv(rb_config.ENV_URL, _url(redis_url, 2))
    assert _db(Settings.from_conf(_conf_app(broker_url=broker).conf).client()) == 2
    rb_config.configure(url=_url(redis_url, 3), prefix="cfg:")
    configured = Settings.from_conf(_conf_app(broker_url=broker).conf)
    assert (_db(configured.client()), configured.prefix) == (3, "cfg:")
    explicit = Settings.from_conf(
        _conf_app(broker_url=broker, redisbreaker_url=_url(redis_url, 4),
                  redisbreaker_prefix="app:").conf
    )  # fmt: skip
    assert (_db(explicit.client()), explicit.prefix) == (4, "app:")
    assert explicit.source() == "app.conf.redisbreaker_url"
    assert "redis://" not in repr(explicit)


def _eager_callback_app(redis_url: str, **conf: Any) -> tuple[Celery, Any, Any, Any, list[str]]:
    """An eager app with a stage task and two handlers that log what they did."""
    app = _conf_app(broker_url="memory://", task_always_eager=True, **conf)
    redisbreaker.celery.install(app)
    done: list[str] = []

    @app.task(name=f"{app.main}.stage")
    def stage(*, tx_id: str, participant: str) -> None:
        with transactions.staged(tx_id, participant, app=app):
            done.append(f"staged {participant}")

    @app.task(name=f"{app.main}.commit")
    @transactions.handler
    def commit(*, tx_id: str, participant: str, outcome: str) -> None:
        done.append(f"{outcome} {participant}")

    @app.task(name=f"{app.main}.rollback")
    @transactions.handler
    def rollback(*, tx_id: str, participant: str, outcome: str) -> None:
        done.append(f"{outcome} {participant}")

    return app, stage, commit, rollback, done


def test_transactions_and_handlers_use_the_apps_redis(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With redisbreaker_url naming db 5 and REDISBREAKER_URL db 6, start_transaction,
    staged, the handlers and their acks all use db 5."""
    monkeypatch.setenv(rb_config.ENV_URL, _url(redis_url, 6))
    app, stage, commit, rollback, done = _eager_callback_app(
        redis_url, redisbreaker_url=_url(redis_url, 5)
    )
    tx = start_transaction(
        [stage.s(), stage.s()], timeout=30, mode="callback", app=app,
        on_commit=commit.s(), on_rollback=rollback.s(),
    )  # fmt: skip
    assert sorted(done) == ["commit 0", "commit 1", "staged 0", "staged 1"]
    assert _db(tx.client) == 5
    assert tx.status().tally.acked == 2
    assert redis.Redis.from_url(_url(redis_url, 6)).dbsize() == 0


def test_handlers_follow_a_custom_prefix(redis_url: str) -> None:
    """start_transaction(prefix="custom:") in callback mode: the stage tasks and
    handlers find the transaction (the prefix travels as tx_prefix)."""
    app, _stage, commit, rollback, done = _eager_callback_app(redis_url, redisbreaker_url=redis_url)

    @app.task(name=f"{app.main}.stage_prefixed")
    def stage(*, tx_id: str, participant: str, tx_prefix: str) -> None:
        with transactions.staged(tx_id, participant, app=app, prefix=tx_prefix):
            done.append(f"staged {participant}")

    tx = start_transaction(
        [stage.s(), stage.s()], timeout=30, mode="callback", app=app, prefix="custom:",
        on_commit=commit.s(), on_rollback=rollback.s(),
    )  # fmt: skip
    assert sorted(done) == ["commit 0", "commit 1", "staged 0", "staged 1"]
    assert tx.status().tally.acked == 2
    assert redis.Redis.from_url(redis_url).keys("custom:*")


# -- 4 and 5. one install, and forgetting it is loud -------------------------------------------


def test_one_install_sets_up_everything() -> None:
    """install(app) registers the gate and the watchdog; there is no second install."""
    app = _conf_app(broker_url="memory://")
    redisbreaker.celery.install(app)
    redisbreaker.celery.install(app)  # harmless
    assert WATCHDOG_TASK in app.tasks
    assert any("ConsumptionGate" in str(s) for s in app.steps["consumer"])
    assert not hasattr(transactions, "install")


def test_worker_without_install_logs_an_error_at_start(redis_url: str) -> None:
    """A worker whose tasks declare pause= but whose app has no gate says so at start."""
    w = CeleryWorker("tests.support.celery_apps.no_install_app", broker_url=redis_url)
    with w:
        wait_log(w, "install(app) was not called on this app")
    assert "ERROR" in w.log()
    assert "no_install.render" in w.log()


def test_guarded_task_without_install_warns_once(
    redisbreaker_fake: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """shared_breaker(pause=...) on an app without install: one WARNING at the first run."""
    app = _conf_app(broker_url="memory://", task_always_eager=True)

    @shared_breaker(pause=True, fail_max=3)
    @app.task(name="forgot.t")
    def t(x: int) -> int:
        return x

    with caplog.at_level(logging.WARNING, logger="redisbreaker.celery"):
        assert t.delay(1).get() == 1
        assert t.delay(2).get() == 2
    warnings = [m for m in caplog.messages if "install(app) was not called" in m]
    assert len(warnings) == 1


# -- 6. add_consumer during a pause is undone -------------------------------------------------


@pytest.mark.celery
def test_add_consumer_during_a_pause_is_undone(redis_url: str) -> None:
    """A queue resumed with `celery control add_consumer` while its pause holds is
    cancelled again, with a WARNING that names redisbreaker.celery.resume."""
    ns = namespace()
    w = worker(redis_url, ns, name="solo")
    with w:
        app = sender(redis_url)
        app.conf.update(redisbreaker_url=redis_url, redisbreaker_prefix=f"{ns}:")
        redisbreaker.celery.pause(app, scope="queue", queue=ns)
        wait_log(w, f"pauses queue {ns}")
        app.control.add_consumer(ns, destination=[w.hostname], reply=True, timeout=10)
        wait_log(w, "resumed from outside")
        assert "redisbreaker.celery.resume" in w.log()

        def consuming() -> list[str]:
            replies = app.control.inspect([w.hostname], timeout=5).active_queues() or {}
            return [q["name"] for q in replies.get(w.hostname, [])]

        wait_for("the queue to be cancelled again", lambda: ns not in consuming())
        redisbreaker.celery.resume(app, scope="queue", queue=ns)
        wait_for("the queue to resume", lambda: ns in consuming())


# -- 7. a worker-scoped refusal goes back at once -----------------------------------------------


def _refusal_countdown(scope: str) -> float:
    app = _conf_app(broker_url="memory://", redisbreaker_retry_jitter=0.5)

    @shared_breaker(scope=scope, fail_max=1)  # type: ignore[arg-type]
    @app.task(name=f"scoped.{scope}")
    def t() -> None: ...

    spec = spec_of(app.tasks[f"scoped.{scope}"])
    assert spec is not None
    seen: dict[str, float] = {}

    class Task:
        name = "t"

        def retry(self, exc: BaseException, countdown: float) -> Retry:
            seen["countdown"] = countdown
            return Retry()

    request = types.SimpleNamespace(called_directly=True, is_eager=False, id="1", retries=0)
    with pytest.raises(Retry):
        spec.refused(Task(), request, (), {}, CircuitOpenError("t", 60.0))
    return seen["countdown"]


def test_worker_and_host_scoped_refusals_go_back_at_once() -> None:
    """Refused by a worker/host breaker: re-sent with a countdown of jitter only, so a
    healthy worker takes it now; queue/cluster scopes wait for retry_after."""
    assert _refusal_countdown("worker") <= 0.5
    assert _refusal_countdown("host") <= 0.5
    assert _refusal_countdown("cluster") >= 60.0
    assert _refusal_countdown("queue") >= 60.0


# -- 8. transactions resolve their client lazily --------------------------------------------------


def test_transaction_handles_resolve_their_client_on_first_use(redis_url: str) -> None:
    """Like breakers, a Transaction made before configure() works once it is configured."""
    tx = Transaction("made-at-import")  # no Redis configured yet: no error
    aio_tx = redisbreaker.aio.Transaction("made-at-import")
    with pytest.raises(ConfigurationError, match="no Redis configured"):
        tx.status()
    rb_config.configure(url=redis_url)
    Transaction.begin(1, timeout=30, tx_id="made-at-import")
    assert tx.status().tally.participants == 1

    async def status() -> int:
        return (await aio_tx.status()).tally.participants

    assert asyncio.run(status()) == 1


# -- 9. async misuse is named ----------------------------------------------------------------------


def test_sync_breaker_refuses_a_coroutine(r: redis.Redis) -> None:
    """b.call(async_fn) raises TypeError naming the asyncio class and counts nothing."""
    b = SharedBreaker("misuse", client=r, fail_max=1)

    async def work() -> int:
        return 1

    with pytest.raises(TypeError, match=r"redisbreaker\.aio\.SharedBreaker"):
        b.call(work)  # type: ignore[unused-coroutine]  # the misuse is the point
    assert b.sync().calls == 0
    assert b.snapshot().state.value == "closed"


def test_async_breaker_refuses_a_sync_function(redis_url: str) -> None:
    """await aio_b.call(sync_fn) raises TypeError naming the sync class."""

    async def main() -> None:
        client = rb_config.async_client_from_url(redis_url)
        b = redisbreaker.aio.SharedBreaker("misuse-aio", client=client, fail_max=1)
        with pytest.raises(TypeError, match=r"redisbreaker\.SharedBreaker"):
            await b.call(lambda: 1)  # type: ignore[arg-type, return-value]
        with pytest.raises(TypeError, match=r"redisbreaker\.SharedBreaker"):
            b(lambda: 1)  # type: ignore[arg-type, return-value]
        assert (await b.snapshot()).state.value == "closed"
        await client.aclose()

    asyncio.run(main())


# -- 10. redisbreaker.testing: users' own tests ----------------------------------------------------


def test_fake_fixture_runs_breakers_and_transactions(redisbreaker_fake: Any) -> None:
    """The redisbreaker_fake fixture: a breaker trips and a transaction decides, in memory."""
    b = SharedBreaker("unit", fail_max=1, reset_timeout=30)
    with pytest.raises(ZeroDivisionError):
        b.call(lambda: 1 / 0)
    with pytest.raises(CircuitOpenError):
        b.call(print)
    tx = Transaction.begin(1, timeout=5)
    assert tx.vote(0, True).outcome is Outcome.COMMIT
    assert redisbreaker_fake.keys("rb:*")


def test_eager_celery_task_with_shared_breaker(redisbreaker_fake: Any) -> None:
    """A @shared_breaker task under task_always_eager, on fakeredis: it trips and the
    next call is refused (on_open='fail' shows it as CircuitOpenError)."""
    app = _conf_app(broker_url="memory://", task_always_eager=True)
    redisbreaker.celery.install(app)

    @shared_breaker(fail_max=2, reset_timeout=30, on_open="fail")
    @app.task(name=f"{app.main}.flaky")
    def flaky(ok: bool) -> str:
        if not ok:
            raise ValueError("down")
        return "ok"

    assert flaky.delay(True).get() == "ok"
    for _ in range(2):
        with pytest.raises(ValueError, match="down"):
            flaky.delay(False).get()
    with pytest.raises(CircuitOpenError):
        flaky.delay(True).get()
    assert settings_for(app).source() == "redisbreaker.configure() / REDISBREAKER_URL"


def test_real_server_fixture(redisbreaker_redis: Any) -> None:
    """The redisbreaker_redis fixture: a private redis-server, flushed, configured."""
    assert redisbreaker_redis.dbsize() == 0
    SharedBreaker("real", fail_max=1).call(print, "ran")
    assert redisbreaker_redis.info("server")["redis_version"]


def test_stage_skipped_survives_pickling() -> None:
    """A prefork child pickles StageSkipped back to its parent: it must round-trip."""
    import pickle

    from redisbreaker.tx_core import Decision, Tally

    decision = Decision("t", Outcome.ROLLBACK, Tally(2, 0, 1, 0, 0, 0), reason="no")
    again = pickle.loads(pickle.dumps(transactions.StageSkipped(decision, "1", undone=True)))
    assert (again.decision, again.participant, again.undone) == (decision, "1", True)
    assert str(again) == str(transactions.StageSkipped(decision, "1", undone=True))
