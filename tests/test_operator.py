"""Issue #11: operators see and steer the fleet. Trip reasons and audit in the state,
fleet-wide totals, discovery (standalone and Cluster), worker heartbeats, the
`redisbreaker` CLI and the Prometheus collector, on real servers."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest

import redisbreaker.celery
from redisbreaker import CircuitOpenError, CountWindow, SharedBreaker, State, Transaction
from redisbreaker.cli import main as cli_main
from redisbreaker.config import client_from_url
from redisbreaker.fleet import Fleet, split_name
from redisbreaker.metrics import FleetCollector
from redisbreaker.testing import VirtualClock
from redisbreaker.testing.servers import RedisCluster
from tests.helpers import ok, script_calls, settle_hub, wait_for
from tests.support.celery_apps.helpers import namespace, sender, wait_log, worker

ROOT = Path(__file__).resolve().parent.parent


def payments_down() -> None:
    raise ValueError("payments down")


def trip(b: SharedBreaker, n: int = 1) -> None:
    for _ in range(n):
        with pytest.raises(ValueError, match="payments down"):
            b.call(payments_down)


def run_cli(
    *args: str, url: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`redisbreaker ARGS` in a process of its own, as an operator runs it."""
    env = {**os.environ}
    env.pop("REDISBREAKER_URL", None)
    if url:
        env["REDISBREAKER_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "redisbreaker.cli", *args], capture_output=True, text=True,
        timeout=timeout, env=env, cwd=ROOT,
    )  # fmt: skip


# -- 1. trip reasons and audit ------------------------------------------------------------


def test_a_trip_records_its_rule_failure_and_caller(
    r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The script that trips records the rule, the counts, the failure and the caller;
    the tripping process logs one WARNING with it, and the recovery one INFO."""
    clock = VirtualClock()
    b = SharedBreaker("payments", client=r, fail_max=3, reset_timeout=30)
    clock.attach(b)
    with caplog.at_level(logging.INFO, logger="redisbreaker"):
        trip(b, 3)
        reason = b.snapshot().reason
        assert reason.rule == "consecutive"
        assert reason.text == "3 consecutive failures (fail_max 3)"
        assert reason.error == "ValueError: payments down"
        assert reason.by.startswith(os.uname().nodename) and f":{os.getpid()}:" in reason.by
        assert reason.at_ms > 0
        clock.advance(31)
        assert b.call(ok) == "ok"  # the trial closes it
    opened = [m for m in caplog.messages if "opened" in m]
    assert opened == [
        "breaker 'payments' opened: 3 consecutive failures (fail_max 3); "
        "last failure: ValueError: payments down; retry in 30.0s"
    ]
    assert "breaker 'payments' closed: 1 half-open trial(s) succeeded" in caplog.messages
    assert b.snapshot().reason.rule == "recovered"


def test_rate_trips_and_a_failed_trial_say_so(r: redis.Redis) -> None:
    """A failure-rate trip names the rate and threshold; a failed trial says it failed."""
    clock = VirtualClock()
    b = SharedBreaker("rated", client=r, fail_max=None, window=CountWindow(4), minimum_calls=4,
                      failure_rate_threshold=0.5, reset_timeout=10)  # fmt: skip
    clock.attach(b)
    b.call(ok)
    b.call(ok)
    trip(b, 2)
    snap = b.snapshot()
    assert snap.state is State.OPEN
    assert snap.reason.rule == "failure_rate"
    assert snap.reason.text == "failure rate 50% of 4 calls (threshold 50%)"
    clock.advance(11)
    trip(b, 1)  # the trial
    assert b.snapshot().reason.rule == "trial_failed"


def test_operator_actions_record_who_and_why(r: redis.Redis) -> None:
    """force_open/open/reset record the operator (user@host) and the reason given."""
    b = SharedBreaker("ops-audit", client=r, fail_max=5)
    b.force_open(reason="deploy freeze")
    reason = b.snapshot().reason
    assert reason.rule == "operator"
    assert reason.text.startswith("force_open by ") and reason.text.endswith(": deploy freeze")
    assert "@" in reason.by
    b.reset()  # a reset of a state it changes, without a reason
    assert b.snapshot().reason.text.startswith("reset by ")
    b.reset(reason="again")  # a reset that changes nothing is still recorded
    assert b.snapshot().reason.text.endswith(": again")


# -- 2. fleet-wide totals -----------------------------------------------------------------


def test_totals_ride_on_calls_that_happen_anyway(r: redis.Redis) -> None:
    """Successes, failures, slow, ignored and refused calls are counted fleet-wide and
    sent with the flushes that already happen: 1000 successes still cost no round trip."""
    _probe = settle_hub(r)
    clock = VirtualClock()
    b = SharedBreaker("totals", client=r, fail_max=2, reset_timeout=30, sync_interval=60,
                      ignore=[KeyError])  # fmt: skip
    other = SharedBreaker("totals", client=redis.Redis(connection_pool=r.connection_pool),
                          fail_max=2, reset_timeout=30, sync_interval=60,
                          ignore=[KeyError])  # fmt: skip
    clock.attach(b, other)
    b.call(ok)  # binds and caches the view
    before = script_calls(r)
    for _ in range(1000):
        b.call(ok)
    assert script_calls(r) == before
    empty: dict[str, int] = {}
    with pytest.raises(KeyError):
        b.call(lambda: empty["missing"])  # ignored
    trip(other, 2)  # another process trips it; this one hears of it before it flushes:
    assert wait_for(lambda: b.core.view is not None and b.core.view.state is State.OPEN)
    b.sync()  # its successes of the closed generation still count in the totals
    for _ in range(3):
        with pytest.raises(CircuitOpenError):
            b.call(ok)  # refused, counted here
    clock.advance(31)
    b.sync()
    t = b.snapshot().totals
    assert (t.successful, t.failed, t.ignored, t.not_permitted, t.trips) == (1001, 2, 1, 3, 1)
    assert t.open_ms >= 31_000


# -- 3. discovery -------------------------------------------------------------------------


def test_fleet_lists_every_breaker_with_user_names(r: redis.Redis) -> None:
    """Listing finds every breaker under the prefix, named as users know them."""
    for i in range(300):
        SharedBreaker(f"svc-{i}", client=r, fail_max=3).sync()
    SharedBreaker("fleet.render|worker=celery@gpu1", client=r, fail_max=3).sync()
    SharedBreaker("other", client=r, prefix="elsewhere:", fail_max=3).sync()
    found = Fleet(r).breakers()
    assert len(found) == 301
    render = next(b for b in found if b.name == "fleet.render")
    assert (render.scope, render.scope_key, render.label) == (
        "worker",
        "celery@gpu1",
        "fleet.render [worker celery@gpu1]",
    )
    assert split_name("redisbreaker.pause|queue=video") == ("pause", "queue", "video")


@pytest.mark.cluster
def test_cli_on_a_redis_cluster(redis_cluster: RedisCluster) -> None:
    """On a 3-master Cluster: a breaker tripped by ValueError shows open in `ls --json`
    with a reason naming ValueError, and `reset` closes it (every master is scanned)."""
    redis_cluster.flushall()
    client = client_from_url(redis_cluster.url)
    names = [f"cl-{i}" for i in range(30)]  # spread over the masters' slots
    for name in names:
        SharedBreaker(name, client=client, fail_max=5).sync()
    trip(SharedBreaker("payments", client=client, fail_max=1))
    listed = run_cli("ls", "--json", url=redis_cluster.url)
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert set(names) | {"payments"} <= set(rows)
    assert rows["payments"]["state"] == "open"
    assert "ValueError" in rows["payments"]["reason_detail"]["error"]
    done = run_cli("reset", "payments", "--reason", "fixed", url=redis_cluster.url)
    assert done.returncode == 0, done.stderr
    assert Fleet(client).breaker("payments").state is State.CLOSED


# -- 5. the CLI on a standalone Redis ------------------------------------------------------


def test_cli_ls_show_reset(redis_url: str) -> None:
    """The issue's example end to end, from a shell: ls --json, show, reset."""
    trip(SharedBreaker("payments", client=client_from_url(redis_url), fail_max=1))
    listed = run_cli("ls", "--json", url=redis_url)
    assert listed.returncode == 0, listed.stderr
    (row,) = [x for x in json.loads(listed.stdout) if x["name"] == "payments"]
    assert {"name", "state", "retry_after", "trips", "reason"} <= set(row)
    assert row["state"] == "open" and row["trips"] == 1 and row["retry_after"] > 0
    assert "consecutive" in row["reason"]
    assert row["reason_detail"]["error"] == "ValueError: payments down"
    shown = run_cli("show", "payments", url=redis_url)
    assert "ValueError: payments down" in shown.stdout
    done = run_cli("reset", "payments", "--reason", "fixed upstream", url=redis_url)
    assert done.returncode == 0, done.stderr
    assert "payments: closed" in done.stdout and "fixed upstream" in done.stdout


def test_cli_operator_commands_keep_the_fleets_settings(r: redis.Redis, redis_url: str) -> None:
    """open/force-open/disable act with the settings stored with the state: the fleet's
    own processes see no settings fight afterwards."""
    b = SharedBreaker("tuned", client=r, fail_max=7, reset_timeout=45, half_open_permits=2)
    b.sync()
    for args in (["open", "tuned", "--for", "30"], ["force-open", "tuned"],
                 ["disable", "tuned"], ["reset", "tuned"]):  # fmt: skip
        done = run_cli(*args, url=redis_url)
        assert done.returncode == 0, done.stderr
    assert b.snapshot().fingerprint == b.options.fingerprint()  # still the fleet's settings


def test_cli_errors_are_one_line(redis_url: str) -> None:
    """A bad URL, an unreachable Redis, an unknown breaker: one line, non-zero, no traceback."""
    for args, url, needle in [
        (["ls"], "http://nowhere", "scheme 'http'"),
        (["ls"], "redis://127.0.0.1:1/0", "Connection refused"),
        (["show", "nope"], redis_url, "no breaker 'nope'"),
        (["show", "nope", "--scope", "galaxy=1"], redis_url, "expected cluster"),
    ]:
        done = run_cli(*args, url=url)
        assert done.returncode != 0, args
        assert "Traceback" not in done.stderr
        assert needle in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) <= 4  # (a usage error shows the usage)


def test_cli_version_and_help() -> None:
    """--version prints the package version; no command prints usage and exits 2."""
    done = run_cli("--version")
    assert done.returncode == 0 and "redisbreaker, version" in done.stdout
    assert cli_main([]) == 2


def test_cli_pause_resume_and_tx(redis_url: str, r: redis.Redis) -> None:
    """pause/resume (the scopes of redisbreaker.celery.pause) and tx ls/show/abort."""
    done = run_cli("pause", "--scope", "queue", "--queue", "video", "--reason", "migration",
                   url=redis_url)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "pause [queue video]: forced_open" in done.stdout
    app = sender(redis_url)
    app.conf.update(redisbreaker_url=redis_url)
    # The same pause the Celery API makes: resume() through the library ends it.
    snap = redisbreaker.celery.resume(app, scope="queue", queue="video")
    assert snap.state is State.CLOSED
    assert run_cli("pause", "--scope", "worker", url=redis_url).returncode != 0  # needs --worker
    tx = Transaction.begin(["a", "b"], timeout=300, client=r)
    tx.vote("a", True)
    listed = run_cli("tx", "ls", "--json", url=redis_url)
    (row,) = json.loads(listed.stdout)
    assert (row["tx_id"], row["outcome"], row["yes"]) == (tx.id, "pending", 1)
    aborted = run_cli("tx", "abort", tx.id, "--reason", "operator says no", url=redis_url)
    assert "ROLLBACK" in aborted.stdout and "operator says no" in aborted.stdout
    assert "ROLLBACK" in run_cli("tx", "show", tx.id, url=redis_url).stdout


def test_cli_watch_prints_transitions(redis_url: str) -> None:
    """`watch` prints one line per transition made anywhere."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "redisbreaker.cli", "watch", "--count", "1", "--timeout", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "REDISBREAKER_URL": redis_url},
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        assert "watching" in proc.stderr.readline()  # subscribed: the positive signal
        r = redis.Redis.from_url(redis_url)
        wait_for(lambda: r.pubsub_numsub("rb:cb:events")[0][1] >= 1, 10)
        trip(SharedBreaker("watched", client=client_from_url(redis_url), fail_max=1))
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert "breaker watched: closed -> open" in out


def test_cli_takes_settings_from_a_celery_app(redis_url: str) -> None:
    """-A module:app reads the app's redisbreaker_url and prefix, as workers do."""
    ns = namespace()
    SharedBreaker("from-app", client=client_from_url(redis_url), prefix=f"{ns}:").sync()
    env_app = "tests.support.celery_apps.gate_app"
    done = subprocess.run(
        [sys.executable, "-m", "redisbreaker.cli", "-A", f"{env_app}:app", "ls", "--json"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "CELERY_BROKER_URL": redis_url, "RB_NS": ns},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [row["name"] for row in json.loads(done.stdout)] == ["from-app"]


# -- 4. worker heartbeats -------------------------------------------------------------------


@pytest.mark.celery
def test_workers_publish_heartbeats_with_their_pauses(redis_url: str) -> None:
    """A gate's heartbeat lists its queues; a manual pause shows as paused, by whom."""
    ns = namespace()
    w = worker(redis_url, ns, name="hb")
    with w:
        app = sender(redis_url)
        app.conf.update(redisbreaker_url=redis_url, redisbreaker_prefix=f"{ns}:")
        fleet = Fleet(client_from_url(redis_url), f"{ns}:")
        wait_for(lambda: any(x.worker == w.hostname for x in fleet.workers()), 30)
        (status,) = fleet.workers()
        assert status.queues == [ns] and status.paused == {}
        redisbreaker.celery.pause(app, scope="queue", queue=ns, reason="maintenance")
        wait_log(w, f"pauses queue {ns}")
        wait_for(lambda: ns in fleet.workers()[0].paused, 30)
        paused = fleet.workers()[0].paused[ns]
        assert paused["by"] == f"pause [queue {ns}]" and paused["since_ms"] > 0
        listed = run_cli("--prefix", f"{ns}:", "workers", "--json", url=redis_url)
        assert json.loads(listed.stdout)[0]["worker"] == w.hostname


# -- 6. metrics ----------------------------------------------------------------------------


def test_metrics_show_the_fleet(r: redis.Redis) -> None:
    """The collector exposes the state, totals, rates and paused queues of the fleet."""
    trip(SharedBreaker("payments", client=r, fail_max=1))
    SharedBreaker("render|worker=celery@gpu1", client=r, fail_max=3).call(ok)
    registry = CollectorRegistry()
    registry.register(FleetCollector(r))
    text = generate_latest(registry).decode()
    assert (
        'redisbreaker_circuitbreaker_state{name="payments",scope="cluster",scope_key="",'
        'state="open"} 1.0'
    ) in text
    assert (
        'redisbreaker_circuitbreaker_calls_total{kind="failed",name="payments"' in text
        or (
            'redisbreaker_circuitbreaker_calls_total{name="payments",scope="cluster",scope_key="",'
            'kind="failed"} 1.0'
        )
        in text
    )
    assert 'redisbreaker_circuitbreaker_trips_total{name="payments"' in text
    assert 'name="render",scope="worker",scope_key="celery@gpu1"' in text


def test_serve_exposes_metrics_over_http(redis_url: str) -> None:
    """`redisbreaker serve` answers /metrics in the Prometheus text format."""
    import socket
    import urllib.request

    trip(SharedBreaker("payments", client=client_from_url(redis_url), fail_max=1))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "redisbreaker.cli", "serve", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env={**os.environ, "REDISBREAKER_URL": redis_url},
    )  # fmt: skip
    try:
        body = ""

        def scraped() -> bool:
            nonlocal body
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                    body = resp.read().decode()
                return True
            except OSError:
                return False

        assert wait_for(scraped, 30)
        assert 'name="payments",scope="cluster",scope_key="",state="open"} 1.0' in body
    finally:
        proc.terminate()
        proc.wait(10)


def test_grafana_dashboard_uses_only_metrics_we_export(r: redis.Redis) -> None:
    """Every metric the shipped Grafana board queries is one the collector exports."""
    import re

    board = json.loads((ROOT / "ops" / "grafana" / "redisbreaker.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"redisbreaker_[a-z_]+", e)}
    registry = CollectorRegistry()
    registry.register(FleetCollector(r))
    trip(SharedBreaker("payments", client=r, fail_max=1))
    Transaction.begin(2, timeout=60, client=r)
    text = generate_latest(registry).decode()
    exported = set(re.findall(r"^(?:# TYPE )?(redisbreaker_[a-z_]+)", text, re.M))
    assert used and used <= exported, used - exported
