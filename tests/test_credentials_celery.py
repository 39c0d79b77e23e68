"""No password in anything a worker, ``celery report``, ``celery inspect conf`` or the
CLI prints (issue 15, item 6).

The broker and the library each log in as their own ACL user, with passwords that
hold characters which must be percent-encoded. A worker runs at DEBUG level through
retries, dead letters, a trip and refusals; then every text is searched for each
password, raw and encoded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from celery import Celery

from redisbreaker.celery.deadletter import DeadLetters
from redisbreaker.testing import CeleryWorker
from redisbreaker.testing.servers import RedisServer
from tests.helpers import wait_for
from tests.support.celery_apps.helpers import namespace

pytestmark = [pytest.mark.celery, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.support.celery_apps.dlq_app"
BROKER_PW = "Br0k/er#pw?-" + uuid.uuid4().hex[:6]
RB_PW = "rb@L1b/sec#" + uuid.uuid4().hex[:6]
WRONG_PW = "Wr0ng/pw#" + uuid.uuid4().hex[:6]
SECRETS = [BROKER_PW, RB_PW, WRONG_PW]


def _forms(pw: str) -> list[str]:
    return [pw, quote(pw, safe=""), quote(pw)]


def _assert_clean(where: str, text: str) -> None:
    for pw in SECRETS:
        for form in _forms(pw):
            assert form not in text, f"{where} shows a password: ...{_around(text, form)}..."


def _around(text: str, form: str) -> str:
    at = text.index(form)
    return text[max(0, at - 80) : at + 80]


@pytest.fixture
def users(redis_server: RedisServer, r: redis.Redis) -> Iterator[tuple[str, str]]:
    """The broker's URL and the library's, each for its own password-protected user."""
    for user, pw in (("rb-broker", BROKER_PW), ("rb-lib", RB_PW)):
        r.acl_setuser(user, enabled=True, passwords=[f"+{pw}"], commands=["+@all"],
                      keys=["*"], channels=["*"])  # fmt: skip
    host = f"127.0.0.1:{redis_server.port}"
    yield (
        f"redis://rb-broker:{quote(BROKER_PW, safe='')}@{host}/0",
        f"redis://rb-lib:{quote(RB_PW, safe='')}@{host}/0",
    )
    for user in ("rb-broker", "rb-lib"):
        r.acl_deluser(user)


def _run(cmd: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    return f"{done.stdout}\n{done.stderr}"  # (not the command: it holds the URL)


def test_no_password_in_anything_printed(users: tuple[str, str]) -> None:
    broker, lib = users
    ns = namespace()
    env = {"CELERY_BROKER_URL": broker, "RB_REDIS": lib, "RB_NS": ns}
    worker = CeleryWorker(
        APP, broker_url=broker, name=f"{ns}-cred", env={"RB_NS": ns, "RB_REDIS": lib},
        extra_args=["--loglevel=DEBUG"],
    )  # fmt: skip
    store = DeadLetters(client=redis.Redis.from_url(lib), prefix=f"{ns}:")
    sender = Celery("cred_sender", broker=broker)
    sender.conf.update(task_default_queue=ns)
    outputs: dict[str, str] = {}
    with worker:
        for job in range(2):
            sender.send_task("dlq.fetch", args=[job], queue=ns)  # retried, dead-lettered
        for job in range(3):
            sender.send_task("dlq.guarded", args=[job], queue=ns)  # trips, then refused
        assert wait_for(lambda: len(store.entries()) >= 3, 90), worker.log()[-3000:]
        celery = [sys.executable, "-m", "celery", "-A", APP]
        outputs["celery report"] = _run([*celery, "report"], env)
        outputs["celery inspect conf"] = _run(
            [*celery, "inspect", "conf", "-d", worker.hostname, "--timeout", "10"], env
        )
        cli = [sys.executable, "-m", "redisbreaker.cli", "-A", f"{APP}:app"]
        outputs["redisbreaker ls"] = _run([*cli, "ls"], env)
        outputs["redisbreaker dlq stats"] = _run([*cli, "dlq", "stats"], env)
        wrong = lib.replace(quote(RB_PW, safe=""), quote(WRONG_PW, safe=""))
        outputs["redisbreaker, wrong password"] = _run(
            [sys.executable, "-m", "redisbreaker.cli", "--url", wrong, "ls"], {}
        )
        unencoded = lib.replace(quote(RB_PW, safe=""), WRONG_PW)
        outputs["redisbreaker, unencoded password"] = _run(
            [sys.executable, "-m", "redisbreaker.cli", "--url", unencoded, "ls"], {}
        )
    outputs["worker log"] = worker.log()
    # The commands did their work (a test of nothing proves nothing).
    assert "redisbreaker_url" in outputs["celery report"]
    assert "redisbreaker_url" in outputs["celery inspect conf"], outputs["celery inspect conf"]
    assert "dlq.guarded" in outputs["redisbreaker ls"]
    assert "refused the credentials" in outputs["redisbreaker, wrong password"]
    assert "percent-encode" in outputs["redisbreaker, unencoded password"]
    assert "opened" in outputs["worker log"] and "retry" in outputs["worker log"].lower()
    for where, text in outputs.items():
        _assert_clean(where, text)
