"""The fleet suite's constants: Redis CPU per operation, measured through the library.

Each cost is the server's own CPU (``INFO cpu`` ``used_cpu_user + used_cpu_sys``) over
many operations, less the idle server's rate, divided by the operations: never wall
time. Two ways:

* **one client, one request at a time** (:func:`measure_constants`): every constant,
  each driven through the library's own API, rounds interleaved, medians;
* **under load** (:func:`measure_under_load`): ``c_sync``, ``c_record`` and the
  background syncer's flush again, from the library's captured requests replayed by
  100 processes at about 40% of a core, where several clients are served per wake-up
  of the server. Sizing uses these.

The background syncer's ``breaker_flush`` (``c_flush`` per breaker, ``c_flush_call``
per call: sent by the library's own ``Syncer``) is measured at two depths, and so is
the library's report calls pipelined (``c_pipe``, strategy ``batched``).
"""

from __future__ import annotations

import contextlib
import functools
import random
import selectors
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import redis

from benchmarks import fleet_replay as replay
from benchmarks import fleet_sim as sim
from benchmarks.fleet_model import (
    CONNECTIONS_PER_PROCESS,
    Constants,
    Fleet,
    fit_pipeline,
)
from benchmarks.harness import Config
from redisbreaker.bench import Boom
from redisbreaker.breaker import SharedBreaker
from redisbreaker.config import client_from_url
from redisbreaker.syncer import Syncer
from redisbreaker.transaction import Transaction

PIPE_DEPTHS = (10, 100)
# A sync's cost at these request rates too (per second, one client): how much the
# constants depend on the load (full runs only).
PACES = (100, 1000)


@contextlib.contextmanager
def _measured(info: redis.Redis, idle: float, out: list[sim.Delta]) -> Iterator[None]:
    """The server's counters around a block, its idle CPU rate taken out."""
    before = sim.Counters.read(info)
    yield
    d = sim.Delta.between(before, sim.Counters.read(info))
    out.append(replace(d, cpu=d.cpu - idle * d.seconds))


def _idle_rate(info: redis.Redis, seconds: float) -> float:
    """The server's CPU per second while nothing is asked of it."""
    before = sim.Counters.read(info)
    time.sleep(seconds)
    return sim.Delta.between(before, sim.Counters.read(info)).cpu_share


@dataclass
class Subscribers:
    """Raw SUBSCRIBE connections (what each process's hub holds), drained by one thread."""

    sockets: list[socket.socket]
    stop: threading.Event
    thread: threading.Thread

    @classmethod
    def open(cls, url: str, channel: str, n: int) -> Subscribers:
        parts = urlsplit(url)
        raw = channel.encode()
        command = b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(raw), raw)
        socks = []
        for _ in range(n):
            sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379))
            sock.sendall(command)
            sock.settimeout(0.05)
            socks.append(sock)
        stop = threading.Event()
        thread = threading.Thread(target=cls._drain, args=(socks, stop), daemon=True)
        thread.start()
        return cls(socks, stop, thread)

    @staticmethod
    def _drain(socks: list[socket.socket], stop: threading.Event) -> None:
        selector = selectors.DefaultSelector()
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ, sock)
        while not stop.is_set():
            for key, _ in selector.select(0.05):
                with contextlib.suppress(OSError):
                    key.data.recv(1 << 16)
        selector.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for sock in self.sockets:
            sock.close()


def _wait_subscribed(info: redis.Redis, channel: str, n: int, *, exactly: bool = False) -> None:
    """Until ``channel`` has ``n`` subscribers (at least, or ``exactly``)."""
    deadline = time.monotonic() + 30
    while True:
        count = int(info.pubsub_numsub(channel)[0][1])
        if count == n or (count > n and not exactly):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{n} subscriptions to {channel} not confirmed")
        time.sleep(0.01)


class Probe:
    """The library's operations, each run ``n`` times on one client."""

    def __init__(self, url: str, prefix: str, breakers: int) -> None:
        self.prefix = prefix
        self.client: Any = client_from_url(url, max_connections=8)
        self.lazy = [self._breaker(f"lazy-{j}", 1e-6) for j in range(breakers)]
        self.warm = [self._breaker(f"warm-{j}", 3600.0) for j in range(breakers)]
        self.flip = self._breaker("flip", 3600.0)
        self.flipped = False
        self.pipes = {d: self._flusher(f"pipe{d}", d) for d in PIPE_DEPTHS}
        self.syncers = {d: self._syncer(f"flush{d}", d) for d in PIPE_DEPTHS}
        for b in [*self.lazy, *self.warm, self.flip]:
            b.call(sim.ok)

    def _breaker(self, name: str, sync_interval: float) -> SharedBreaker:
        """A breaker the process's background syncer leaves alone: every request here
        is the one measured."""
        return SharedBreaker(name, client=self.client, prefix=self.prefix, fail_max=sim.NEVER,
                             sync_interval=sync_interval, background_sync=False)  # fmt: skip

    def _syncer(self, name: str, depth: int) -> tuple[Syncer, list[SharedBreaker]]:
        """The library's background syncer, not started, over ``depth`` breakers of its
        own (``sync_due`` is then one ``breaker_flush`` of the due ones)."""
        syncer = Syncer(self.client)
        breakers = [self._breaker(f"{name}-{j}", 3600.0) for j in range(depth)]
        for b in breakers:
            b.call(sim.ok)
            b.core.background = True  # for this syncer only
            syncer.registry.add(b)
        return syncer, breakers

    def _flusher(self, name: str, depth: int) -> sim.Flusher:
        breakers = [self._breaker(f"{name}-{j}", 3600.0) for j in range(depth)]
        for b in breakers:
            b.call(sim.ok)
        return sim.Flusher(self.client, breakers)

    def sync(self, n: int) -> int:
        """n lazy syncs: every call finds its view stale (sync_interval ~0), so each is
        one breaker_admit carrying the success counted before it."""
        for i in range(n):
            self.lazy[i % len(self.lazy)].call(sim.ok)
        return n

    def record(self, n: int) -> int:
        """n recorded failures, each after a success (reported together, one call)."""
        for i in range(n):
            b = self.warm[i % len(self.warm)]
            b.call(sim.ok)
            with contextlib.suppress(Boom):
                b.call(sim.boom)
        return n

    def transition(self, n: int) -> int:
        """n transitions by operator commands (open, reset, open, ...)."""
        for _ in range(n):
            if self.flipped:
                self.flip.reset()
            else:
                self.flip.open(3600)
            self.flipped = not self.flipped
        return n

    def pipelined(self, depth: int, n: int) -> int:
        """n flushes, ``depth`` per pipeline (one round trip), each carrying a success."""
        flusher = self.pipes[depth]
        done = 0
        while done < n:
            for i, b in enumerate(flusher.breakers):
                b.call(sim.ok)
                flusher.used[i] = True
            flusher.tick()
            done += depth
        return done

    def flushed(self, depth: int, n: int) -> int:
        """n breakers synced by the library's background syncer, ``depth`` per
        ``breaker_flush`` call, each carrying a success."""
        syncer, breakers = self.syncers[depth]
        done = 0
        while done < n:
            for b in breakers:
                b.call(sim.ok)  # counted locally (its view is good for an hour)
            if syncer.sync_due(lead=1e9) != depth:  # the lead: every view is due
                raise RuntimeError(f"the syncer did not flush all {depth} breakers")
            done += depth
        return done

    def close(self) -> None:
        self.client.close()


Note = Callable[[str, sim.Delta, int], None]


def measure_constants(cfg: Config, prefix: str) -> tuple[Constants, dict[str, Any]]:
    """Each constant's median over interleaved rounds (µs of server CPU per operation)."""
    n = cfg.pick(3000, 60)
    rounds = cfg.pick(5, 1)
    listeners = cfg.pick(200, 8)
    info = redis.Redis.from_url(cfg.url)
    probe = Probe(cfg.url, prefix, breakers=cfg.pick(50, 5))
    channel = probe.flip.core.channel
    idle = _idle_rate(info, cfg.pick(3.0, 0.3))
    samples: dict[str, list[float]] = {}
    execs: dict[str, list[float]] = {}

    def note(name: str, d: sim.Delta, ops: int) -> None:
        samples.setdefault(name, []).append(d.cpu / ops * 1e6)
        if d.scripts:  # per operation: per breaker for a flush of many
            execs.setdefault(name, []).append(d.script_usec / ops)

    ops: dict[str, Callable[[int], int]] = {
        "sync": probe.sync,
        "record": probe.record,
        **{f"pipe{d}": functools.partial(probe.pipelined, d) for d in PIPE_DEPTHS},
        **{f"flush{d}": functools.partial(probe.flushed, d) for d in PIPE_DEPTHS},
    }
    try:
        for op in ops.values():  # untimed: scripts loaded and compiled, connections made
            op(PIPE_DEPTHS[-1])
        _votes(info, idle, lambda *_: None, probe.client, 1)
        probe.transition(2)
        for _ in range(rounds):
            jobs = [*ops, "votes"]
            random.shuffle(jobs)
            for job in jobs:
                if job == "votes":
                    _votes(info, idle, note, probe.client, max(1, n // 100))
                else:
                    _one(info, idle, note, job, ops[job], n)
            # Transitions heard by `listeners` raw subscribers (and our own hub), then
            # by our own hub alone: the difference is the delivery.
            subs = Subscribers.open(cfg.url, channel, listeners)
            try:
                _wait_subscribed(info, channel, listeners + 1)
                _one(info, idle, note, "transition_heard", probe.transition, max(2, n // 3))
            finally:
                subs.close()
            _wait_subscribed(info, channel, 1, exactly=True)
            _one(info, idle, note, "transition", probe.transition, max(2, n // 3))
        for rate in () if cfg.tiny else PACES:
            _one(info, idle, note, f"sync@{rate}/s",
                 functools.partial(_paced, probe.sync, rate), rate * 2)  # fmt: skip
    finally:
        probe.close()
    conn = _idle_connections(cfg, info, idle)
    info.close()
    med = {k: statistics.median(v) for k, v in samples.items()}
    exec_med = {k: statistics.median(v) for k, v in execs.items()}
    event = max(0.0, (med["transition_heard"] - med["transition"]) / listeners)
    low, high = PIPE_DEPTHS
    pipe_exec, pipe_net = fit_pipeline(low, med[f"pipe{low}"], high, med[f"pipe{high}"])
    flush, flush_call = fit_pipeline(low, med[f"flush{low}"], high, med[f"flush{high}"])
    constants = Constants(
        sync=med["sync"], record=med["record"], transition=med["transition"], event=event,
        vote=med["vote"], begin=med["begin"], conn=conn, idle=idle * 1e6,
        flush=max(0.0, flush), flush_call=max(0.0, flush_call),
        pipe_exec=max(0.0, pipe_exec), pipe_net=max(0.0, pipe_net),
    )  # fmt: skip
    data = {"median_us": med, "exec_us": exec_med, "samples_us": samples, "idle_share": idle,
            "ops_per_round": n, "rounds": rounds, "listeners": listeners}  # fmt: skip
    return constants, data


def _one(
    info: redis.Redis, idle: float, note: Note, name: str, op: Callable[[int], int], n: int
) -> None:
    out: list[sim.Delta] = []
    with _measured(info, idle, out):
        ops = op(n)
    note(name, out[0], ops)


def _paced(op: Callable[[int], int], rate: int, n: int) -> int:
    """``op`` once every 1/``rate`` seconds, ``n`` times."""
    at = time.monotonic()
    for _ in range(n):
        at += 1.0 / rate
        sim.sleep_until(at)
        op(1)
    return n


def _votes(info: redis.Redis, idle: float, note: Note, client: Any, txs: int) -> None:
    """``txs`` transactions of 100 participants begun, then every vote cast (yes: the
    last one decides, as in a transaction that commits)."""
    out: list[sim.Delta] = []
    with _measured(info, idle, out):
        begun = [Transaction.begin(100, timeout=600, client=client) for _ in range(txs)]
    note("begin", out[0], txs)
    out.clear()
    with _measured(info, idle, out):
        for tx in begun:
            for i in range(100):
                tx.vote(i, True)
    note("vote", out[0], 100 * txs)


def _idle_connections(cfg: Config, info: redis.Redis, idle: float) -> float:
    """Server CPU per idle connection per second (half of them subscribed, as a fleet's
    are: a command connection and a hub per process)."""
    n = int(cfg.pick(1000, 20))
    parts = urlsplit(cfg.url)
    socks = [socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379))
             for _ in range(n // 2)]  # fmt: skip
    subs = Subscribers.open(cfg.url, f"rbbench-idle-{uuid.uuid4().hex[:6]}", n - n // 2)
    try:
        time.sleep(cfg.pick(1.0, 0.1))
        rate = _idle_rate(info, cfg.pick(5.0, 0.3))
    finally:
        subs.close()
        for sock in socks:
            sock.close()
    return max(0.0, (float(rate) - idle) / n * 1e6)


def measure_under_load(
    cfg: Config, quiet: Constants, captured: replay.Capture, channel: str
) -> tuple[Constants, dict[str, Any]]:
    """``c_sync``, ``c_record`` and the syncer's flush near capacity: the library's
    captured requests, each kind alone, replayed by P processes (one request in flight
    each) at the rate the one-client constants say is 40% of a core; the server's CPU
    less its idle part, per script call (per breaker for a flush, at two depths, then
    fitted: ``c_flush`` per breaker and ``c_flush_call`` per call). The model sizes
    with these."""
    p, b = cfg.pick(100, 4), cfg.pick(100, 5)
    depths = cfg.pick(PIPE_DEPTHS, (2, 5))
    rounds = cfg.pick(3, 1)
    warm, window = cfg.pick(3.0, 0.3), cfg.pick(10.0, 0.7)
    assert quiet.flush is not None
    assert quiet.flush_call is not None
    kinds: dict[str, tuple[Fleet, replay.FlushPlan | None]] = {
        # Every breaker of every process synced once per T, nothing failing.
        "sync": (Fleet(p, b, calls=1e9, sync_interval=p * b * quiet.sync / 0.4e6,
                       strategy="lazy"), None),
        # Only recorded failures (the lease never ends, so no sync).
        "record": (Fleet(p, b, calls=0.4e6 / quiet.record / (p * b), failure_share=1.0,
                         sync_interval=3600.0, strategy="lazy"), None),
    }  # fmt: skip
    for d in depths:  # each process's syncer flushing d breakers per wake
        every = p * (d * quiet.flush + quiet.flush_call) / 0.4e6
        fleet = Fleet(p, d, calls=1e9, sync_interval=4 * every, strategy="synced")
        kinds[f"flush{d}"] = (fleet, replay.FlushPlan.fixed(every, d))
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    shares: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(rounds):
        order = list(kinds)
        random.shuffle(order)
        for kind in order:
            fleet, plan = kinds[kind]
            run = replay.run_replay(cfg.url, fleet, captured, channel=channel, warm=warm,
                                    window=window, workers=2, plan=plan)  # fmt: skip
            d = run.delta
            base = quiet.idle + fleet.processes * CONNECTIONS_PER_PROCESS * quiet.conn
            # Script calls as the replay counted them sent (not INFO commandstats:
            # another client of this Redis, or a CONFIG RESETSTAT, would skew those).
            per = run.total("requests") / d.seconds
            per *= fleet.breakers if plan is not None else 1
            samples[kind].append((d.cpu / d.seconds * 1e6 - base) / per)
            shares[kind].append(d.cpu_share)
    med = {k: statistics.median(v) for k, v in samples.items()}
    low, high = depths
    flush, flush_call = fit_pipeline(low, med[f"flush{low}"], high, med[f"flush{high}"])
    data = {"median_us": med, "samples_us": samples, "cpu_share": shares, "processes": p,
            "breakers": b, "rounds": rounds, "flush_depths": list(depths)}  # fmt: skip
    loaded = replace(quiet, sync=med["sync"], record=med["record"], flush=max(0.0, flush),
                     flush_call=max(0.0, flush_call))  # fmt: skip
    return loaded, data
