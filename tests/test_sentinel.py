"""Redis Sentinel on real sentinels: redis+sentinel:// URLs, the failover drill (the
master SIGKILLed while a breaker is open and transaction waiters wait), and a Celery
worker on a sentinel:// broker that finds its redisbreaker Redis there."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import quote

import pytest
from celery import Celery

import redisbreaker
from redisbreaker import CircuitOpenError, RedisBreakerError, SharedBreaker, State
from redisbreaker import config as rb_config
from redisbreaker.aio.transaction import Transaction as AioTransaction
from redisbreaker.celery.settings import Settings
from redisbreaker.config import async_client_from_url, client_from_url
from redisbreaker.events import hub_for
from redisbreaker.sentinel import MASTER_CHECK_INTERVAL, BlockingSentinelConnectionPool
from redisbreaker.state import Transition
from redisbreaker.testing.servers import RedisSentinel
from redisbreaker.testing.workers import CeleryWorker
from redisbreaker.transaction import Outcome, Transaction
from redisbreaker.tx_core import Decision
from tests.conftest import SENTINEL_MASTER_PW, SENTINEL_PW
from tests.helpers import Boom, boom, fail_n, ok, wait_for

pytestmark = pytest.mark.sentinel


def _pubsub_names(setup: RedisSentinel) -> set[str]:
    """Names of the connections in pub/sub mode on the current master (the sentinels'
    own are named ``sentinel-...``; the library's hubs carry their client's name)."""
    with setup.client(setup.master(), decode_responses=True) as master:
        return {c["name"] for c in master.client_list(_type="pubsub")}


def _replicated(setup: RedisSentinel) -> int:
    """Wait until both replicas hold everything written so far; return how many do.

    WAIT counts what *this* connection wrote, so it writes a fence first: a replica
    that acknowledges the fence has applied every earlier write (one ordered stream)."""
    with setup.client(setup.master()) as master:
        master.set("drill:fence", uuid.uuid4().hex)
        return int(master.wait(setup.replicas, 30_000))


# -- the URL, end to end --------------------------------------------------------------------


def test_configure_by_sentinel_url(sentinel_setup: RedisSentinel) -> None:
    """configure(url='redis+sentinel://...') reaches the master: a breaker trips there, a
    transaction decides there, and the asyncio client does the same."""
    redisbreaker.configure(url=sentinel_setup.url)
    breaker = SharedBreaker("via-sentinel", fail_max=2, reset_timeout=60)
    fail_n(breaker.call, 2)
    assert breaker.snapshot().state is State.OPEN
    with sentinel_setup.client(sentinel_setup.master()) as master:
        assert master.exists(*breaker.keys) >= 1
    tx = Transaction.begin(1, timeout=30)
    assert tx.vote(0, True).outcome is Outcome.COMMIT

    async def twin() -> None:
        client = async_client_from_url(sentinel_setup.url)
        atx = await AioTransaction.begin(1, timeout=30, client=client)
        assert (await atx.vote(0, False)).outcome is Outcome.ROLLBACK
        await client.aclose()

    asyncio.run(twin())


# -- the failover drill --------------------------------------------------------------------


@dataclass
class _Load:
    """Library calls in loops while the master dies (one thread per kind of call, as a
    transaction call retries until Redis answers): when each was made, what it raised."""

    calls: dict[str, Callable[[], object]]
    seen: list[tuple[float, str, BaseException | None]] = field(default_factory=list)
    longest: dict[str, float] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def run(self, kind: str, call: Callable[[], object]) -> None:
        while not self.stop.is_set():
            at = time.monotonic()
            try:
                call()
            except Exception as exc:
                self.seen.append((at, kind, exc))
            else:
                self.seen.append((at, kind, None))
            self.longest[kind] = max(self.longest.get(kind, 0.0), time.monotonic() - at)
            time.sleep(0.01)

    def start(self) -> None:
        for kind, call in self.calls.items():
            thread = threading.Thread(target=self.run, args=(kind, call), daemon=True)
            thread.start()
            self.threads.append(thread)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(120)

    def successes(self, kind: str, after: float) -> int:
        return sum(1 for at, k, exc in list(self.seen) if k == kind and exc is None and at > after)

    def errors(self) -> list[tuple[float, str, BaseException]]:
        """Everything raised, but a breaker refusing a call because it is open."""
        return [
            (at, kind, exc) for at, kind, exc in self.seen
            if exc is not None and not isinstance(exc, CircuitOpenError)
        ]  # fmt: skip


@pytest.fixture
def listener(sentinel_setup: RedisSentinel) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """A process of its own that prints the transitions of breaker 'payments'."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.sentinel_listener", sentinel_setup.url,
         "payments", "drill-listener"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.strip())

    threading.Thread(target=read, daemon=True).start()
    yield proc, lines
    if proc.stdin:
        proc.stdin.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def test_failover_drill(
    sentinel_setup: RedisSentinel, listener: tuple[subprocess.Popen[str], list[str]]
) -> None:
    """The master SIGKILLed while a breaker is open and waiters wait: during the failover
    every call raises only library errors; after the promotion the breaker is still
    open in both clients, the waiters (thread and asyncio) get the decision made on the
    new master, no decision is lost, and a transition made there reaches a listener in
    another client and in another process."""
    setup = sentinel_setup
    proc, lines = listener
    redisbreaker.configure(url=setup.url, client_name="drill-a")
    client_b = client_from_url(setup.url, client_name="drill-b")
    a = SharedBreaker("payments", fail_max=2, reset_timeout=600)
    b = SharedBreaker("payments", client=client_b, fail_max=2, reset_timeout=600)
    seen_b: list[Transition] = []
    b.subscribe(seen_b.append)
    b.connect()
    fail_n(a.call, 2)
    assert a.snapshot().state is State.OPEN
    with pytest.raises(CircuitOpenError):
        b.call(ok)

    # Decisions made before the failover, and one transaction still waiting for a vote.
    decided: dict[str, Outcome] = {}
    for i in range(20):
        tx = Transaction.begin(2, timeout=300)
        tx.vote(0, True)
        decided[tx.id] = tx.vote(1, i % 2 == 0).outcome
    pending = Transaction.begin(2, timeout=300)
    pending.vote(0, True)
    results: list[Decision] = []
    waiter_client = client_from_url(setup.url, client_name="drill-waiter")

    def wait_thread() -> None:
        results.append(Transaction(pending.id, client=waiter_client).wait(240))

    def wait_asyncio() -> None:
        async def main() -> Decision:
            client = async_client_from_url(setup.url, client_name="drill-aio")
            try:
                return await AioTransaction(pending.id, client=client).wait(240)
            finally:
                await client.aclose()

        results.append(asyncio.run(main()))

    waiters = [threading.Thread(target=wait_thread) for _ in range(3)]
    waiters.append(threading.Thread(target=wait_asyncio))
    for t in waiters:
        t.start()
    hubs = {"drill-a", "drill-b", "drill-waiter", "drill-aio", "drill-listener"}
    assert wait_for(lambda: "ready" in lines, 60), lines
    assert wait_for(lambda: hubs <= _pubsub_names(setup), 60), _pubsub_names(setup)
    assert _replicated(setup) == setup.replicas  # the new master will hold all of it

    other = Transaction(next(iter(decided)), client=client_b)

    def failing_call() -> None:
        with contextlib.suppress(Boom):  # the guarded function's own error: not ours
            b.call(boom)

    def new_transaction() -> None:
        Transaction.begin(1, timeout=60, client=client_b).vote(0, True)

    load = _Load({
        "snapshot": a.snapshot, "call": lambda: b.call(ok), "failing call": failing_call,
        "status": other.status, "begin+vote": new_transaction,
    })  # fmt: skip
    load.start()
    assert wait_for(lambda: load.successes("snapshot", 0) >= 3, 30)
    killed = time.monotonic()
    setup.kill_master()
    promoted = time.monotonic()
    assert wait_for(lambda: load.successes("snapshot", promoted) >= 5, 60)
    load.finish()

    errors = load.errors()
    raw = [exc for _, _, exc in errors if not isinstance(exc, RedisBreakerError)]
    assert raw == []  # never a raw redis-py error
    assert {type(exc).__name__ for _, _, exc in errors} <= {"StorageError"}
    # The state was replicated before the kill: the promoted replica has all of it.
    assert a.snapshot().state is State.OPEN
    assert b.snapshot().state is State.OPEN
    with pytest.raises(CircuitOpenError):
        b.call(ok)
    lost = [i for i, outcome in decided.items() if Transaction(i).status().outcome is not outcome]
    assert lost == []

    # Every hub follows the master: each subscribes again on the promoted replica.
    assert wait_for(lambda: hubs <= _pubsub_names(setup), 60), _pubsub_names(setup)
    final = pending.vote(1, True)
    assert final.outcome is Outcome.COMMIT
    for t in waiters:
        t.join(120)
    assert [d.outcome for d in results] == [Outcome.COMMIT] * 4

    a.reset()
    assert wait_for(lambda: any(t.new is State.CLOSED for t in seen_b), 30), seen_b
    assert wait_for(lambda: "transition open->closed" in lines, 30), lines
    assert proc.poll() is None

    first = min((at for at, _, _ in errors), default=killed)
    last = max((at for at, _, _ in errors), default=killed)
    by_kind = {k: sum(1 for _, kind, _ in errors if kind == k) for k in load.calls}
    during = [(exc, k) for at, k, exc in load.seen if first <= at <= last and k == "call"]
    refused = sum(1 for exc, _ in during if isinstance(exc, CircuitOpenError))
    longest = {k: round(v, 2) for k, v in load.longest.items()}
    print(
        f"\nsentinel failover drill: kill -> every sentinel names the new master "
        f"{promoted - killed:.2f}s; errors from {first - killed:.2f}s to {last - killed:.2f}s "
        f"after the kill ({last - first:.2f}s of errors; errors per call kind {by_kind}; "
        f"longest call per kind {longest}s; b.call(ok) meanwhile: {refused} refused as open, "
        f"{len(during) - refused} ran (fail_open)); {len(decided)} earlier decisions, 0 lost; "
        "4 waiters got the decision made after the failover"
    )


def test_graceful_failover_is_followed_once_the_sentinels_name_the_new_master(
    sentinel_setup: RedisSentinel,
) -> None:
    """After SENTINEL FAILOVER the old master stays up, and stays a master until Sentinel
    reconfigures it (seconds later): a client's pooled connection to it would write
    there, and lose the write. The pool asks the sentinels once a MASTER_CHECK_INTERVAL,
    so the first write after that lands on the new master."""
    setup = sentinel_setup
    breaker = SharedBreaker("graceful", client=client_from_url(setup.url), fail_max=1)
    breaker.snapshot()  # a pooled connection to the current master
    new_port = setup.failover()
    time.sleep(MASTER_CHECK_INTERVAL)  # the pool's next checkout asks the sentinels
    breaker.force_open(reason="after the failover")
    direct = client_from_url(f"redis://127.0.0.1:{new_port}/0", password=setup.password)
    assert SharedBreaker("graceful", client=direct).snapshot().state is State.FORCED_OPEN


def test_after_a_graceful_failover_events_follow_the_new_master(
    sentinel_setup: RedisSentinel,
) -> None:
    """The pool's master check also drops the connections held in use: the pub/sub hub's
    subscription moves to the new master (not left on the old one until Sentinel
    demotes it), and a transition made there reaches the listener."""
    setup = sentinel_setup
    client = client_from_url(setup.url)
    seen: list[Transition] = []
    breaker = SharedBreaker("follow", client=client, fail_max=1)
    breaker.subscribe(seen.append)
    breaker.snapshot()
    hub = hub_for(client)
    assert wait_for(lambda: hub.connected.is_set(), 30)
    new_port = setup.failover()
    time.sleep(MASTER_CHECK_INTERVAL)  # the pool's next checkout asks the sentinels
    breaker.snapshot()  # that checkout: the master moved, every connection is dropped

    def subscribed_to_new_master() -> bool:
        return [port for _, port in hub.endpoints()] == [new_port] and hub.connected.is_set()

    assert wait_for(subscribed_to_new_master, 30)
    other = SharedBreaker("follow", client=client_from_url(setup.url), fail_max=1)
    other.force_open(reason="on the new master")
    assert wait_for(lambda: [t.new for t in seen] == [State.FORCED_OPEN], 30)


# -- Celery: a sentinel:// broker -----------------------------------------------------------


def test_settings_resolve_a_sentinel_broker() -> None:
    """A sentinel:// broker with master_name is rule 4's Redis: the same sentinels,
    master and database, its passwords in the client, never in a repr."""
    app = Celery("s", set_as_current=False)
    app.conf.update(
        broker_url="sentinel://:mpw@127.0.0.1:1/3;sentinel://127.0.0.1:2",
        broker_transport_options={
            "master_name": "svc", "sentinel_kwargs": {"password": "spw"},
            "visibility_timeout": 100,
        },
    )  # fmt: skip
    settings = Settings.from_conf(app.conf)
    assert settings.broker_url == "redis+sentinel://127.0.0.1:1,127.0.0.1:2/svc/3"
    assert settings.visibility_timeout == 100
    assert "mpw" not in repr(settings)
    assert "spw" not in repr(settings)
    client = settings.client()
    pool = client.connection_pool
    assert isinstance(pool, BlockingSentinelConnectionPool)
    assert (pool.service_name, pool.connection_kwargs["password"]) == ("svc", "mpw")
    assert pool.connection_kwargs["db"] == 3
    skw = pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs
    assert skw["password"] == "spw"
    without_name = Celery("s2", set_as_current=False)
    without_name.conf.update(broker_url="sentinel://127.0.0.1:1")
    with pytest.raises(redisbreaker.ConfigurationError, match="master_name"):
        Settings.from_conf(without_name.conf).client()
    explicit = Celery("s3", set_as_current=False)
    explicit.conf.update(
        broker_url="sentinel://127.0.0.1:1",
        broker_transport_options={"master_name": "svc"},
        redisbreaker_url="redis://127.0.0.1:9/0",
    )
    chosen = Settings.from_conf(explicit.conf).client()
    assert chosen.connection_pool.connection_kwargs["port"] == 9


@pytest.mark.celery
def test_worker_on_a_sentinel_broker_uses_that_sentinel(
    sentinel_setup: RedisSentinel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real worker with broker_url='sentinel://...', master_name and the sentinels'
    password in sentinel_kwargs, and no redisbreaker_url: its breaker trips on the
    Sentinel's master, and its log shows neither password."""
    monkeypatch.delenv(rb_config.ENV_URL, raising=False)
    ns = f"s{uuid.uuid4().hex[:8]}"
    env = {
        rb_config.ENV_URL: "",
        "RB_NS": ns,
        "RB_MASTER": sentinel_setup.service_name,
        "RB_SENTINEL_PASSWORD": SENTINEL_PW,
    }
    worker = CeleryWorker(
        "tests.support.celery_apps.sentinel_app", broker_url=sentinel_setup.broker_url,
        pool="solo", env=env, name=f"{ns}-w",
    )  # fmt: skip
    with worker:
        sender = Celery("sentinel_sender", broker=sentinel_setup.broker_url, set_as_current=False)
        sender.conf.update(broker_transport_options=sentinel_setup.broker_transport_options)
        sender.send_task("sentinel.flaky", args=(1,), queue=ns)
        breaker = SharedBreaker(
            "sentinel-flaky", client=client_from_url(sentinel_setup.url), prefix=f"{ns}:"
        )

        def tripped() -> bool:
            return breaker.snapshot().state is State.OPEN

        assert wait_for(tripped, 60), worker.log()
        sender.close()
    log = worker.log()
    assert "opened" in log
    assert "unreachable" not in log
    for secret in (SENTINEL_MASTER_PW, SENTINEL_PW):
        assert secret not in log
        assert quote(secret, safe="") not in log
