"""Replayed fleets for the ``fleet`` suite: the library's own request bytes, at the model's rates.

A real script call costs a Python process ~80 µs of its own CPU, so the library-driven
fleets (``benchmarks/fleet_sim.py``) cannot load Redis to half a core on a small
machine. Here :func:`capture` records the exact bytes the library sends for a lazy
sync, for a recorded failure and for a batched flush of each breaker (whatever the
command: EVALSHA or FCALL), and for its background syncer's ``breaker_flush`` of 1 to
B breakers; and
:func:`run_replay` sends them on P raw connections, one request (or one pipeline) in
flight per connection as a single-threaded process has, at the rates
:mod:`benchmarks.fleet_model` names; each replayed process also holds a subscriber
connection, as its hub would. A replayed request costs the client a few µs, so one
core of client drives Redis to the model's 50% point. Strategy ``synced`` sends what
the syncer sends at steady state: at each of a process's steps (about every 0.9
``sync_interval`` when its breakers are busy), one ``breaker_flush`` of all the
breakers flushed together (their number drawn from the model's distribution), and
now and then a smaller call off the steps; ``lazy`` one sync per breaker, and
``batched`` the library's report calls pipelined.
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
import itertools
import os
import random
import selectors
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import hiredis

from benchmarks.fleet_model import (
    BATCH_TICK,
    Fleet,
    batched_rates,
    binomial,
    sync_rate,
    synced,
)
from benchmarks.fleet_sim import NEVER, Flusher, Run, boom, drive, ok, split, wait_start
from redisbreaker.bench import SCRIPT_COMMANDS, Boom
from redisbreaker.breaker import SharedBreaker
from redisbreaker.config import client_from_url
from redisbreaker.syncer import CHUNK, Syncer


@dataclass(frozen=True)
class Captured:
    """The exact bytes the library sent for one breaker's lazy sync, for one of its
    recorded failures, and for its flush in strategy ``batched`` (its report of the
    successes counted since the last one: what ``fleet_sim.Flusher`` pipelines);
    whatever the command: EVALSHA or FCALL."""

    sync: bytes
    record: bytes
    batched: bytes


@dataclass(frozen=True)
class Capture:
    """What the library sent for breakers ``svc-0 .. svc-<B-1>`` of one prefix: each
    one's sync and record, and its background syncer's flush of the first k of them
    (``flushes[k]``, k = 1..B; each breaker carrying one success)."""

    breakers: list[Captured]
    flushes: list[bytes]

    def __len__(self) -> int:
        return len(self.breakers)


class _Recorder:
    """Wraps a client's connection class to keep the script commands it sends."""

    def __init__(self, client: Any) -> None:
        self.sent: list[bytes] = []
        pool = client.connection_pool
        base: type[Any] = pool.connection_class
        recorder = self

        def send_packed_command(conn: Any, command: Any, check_health: bool = True) -> None:
            raw = command if isinstance(command, bytes) else b"".join(bytes(c) for c in command)
            recorder.sent.append(raw)
            base.send_packed_command(conn, command, check_health)

        pool.connection_class = type(f"Recording{base.__name__}", (base,), {
            "send_packed_command": send_packed_command,
        })  # fmt: skip
        pool.disconnect()  # connections made before use the recording class from now on

    def last_script(self) -> bytes:
        for raw in reversed(self.sent):
            if raw.split(b"\r\n", 3)[2].decode().lower() in SCRIPT_COMMANDS:
                return raw
        raise RuntimeError("no script call was sent")


def capture(url: str, prefix: str, breakers: int, sync_interval: float) -> Capture:
    """The library's requests for breakers ``svc-<j>`` of ``prefix``, taken in steady
    state (each operation done twice, the second one kept: a first call may carry what
    Redis does not know yet). The flushes are what the library's background syncer
    (``redisbreaker.syncer.Syncer``) sends, from a syncer of this capture's own: the
    breakers are made with ``background_sync=False``, so the process's syncer never
    sends for them and every request here is the one asked for."""
    client = client_from_url(url, max_connections=4)
    recorder = _Recorder(client)
    out = []
    flushes = [b""]
    try:
        made = [
            SharedBreaker(f"svc-{j}", client=client, prefix=prefix, fail_max=NEVER,
                          sync_interval=sync_interval, background_sync=False)
            for j in range(breakers)
        ]  # fmt: skip
        for b in made:
            sync = record = batched = b""
            flusher = Flusher(client, [b])
            for _ in range(2):
                b.call(ok)  # counted locally
                b.core.invalidate()  # the lease ends: the next call syncs, carrying it
                b.call(ok)
                sync = recorder.last_script()
                b.call(ok)
                try:
                    b.call(boom)  # reported at once, carrying the success before it
                except Boom:
                    pass
                record = recorder.last_script()
                b.call(ok)  # counted locally, then flushed as strategy batched does
                flusher.used[0] = True
                flusher.tick()
                batched = recorder.last_script()
            out.append(Captured(sync, record, batched))
        for b in made:
            b.core.background = True  # for this capture's syncer only (never started)
        for k in range(1, breakers + 1):
            syncer = Syncer(client)
            for b in made[:k]:
                syncer.registry.add(b)
            for _ in range(2):
                for b in made[:k]:
                    b.call(ok)  # one success each: every breaker has something to carry
                if syncer.sync_due(lead=1e9) != k:  # the lead: every view is due
                    raise RuntimeError(f"the syncer did not send all {k} breakers")
            flushes.append(recorder.last_script())
    finally:
        client.close()
    return Capture(out, flushes)


@dataclass(frozen=True)
class FlushPlan:
    """Strategy ``synced``: a process's syncer steps every ``every`` seconds and flushes
    k of its breakers in that step with probability ``cdf[k] - cdf[k - 1]`` (its busy
    breakers together, in one call per CHUNK); besides, it sends ``alone`` calls a
    second of ``alone_depth`` breakers each (breakers flushed off the steps), and each
    breaker syncs lazily ``lazy`` times a second."""

    every: float
    cdf: list[float]
    lazy: float = 0.0
    alone: float = 0.0
    alone_depth: int = 1

    @classmethod
    def of(cls, fleet: Fleet) -> FlushPlan:
        """The model's plan for ``fleet`` (:func:`benchmarks.fleet_model.synced`)."""
        got = synced(fleet.calls, fleet.failure_share, fleet.sync_interval, fleet.breakers)
        if got.step <= 0.0:
            return cls(3600.0, [1.0])
        q = min(1.0, got.at_steps * got.step)
        pmf = binomial(fleet.breakers, q)
        chunks = sum(p * -(-k // CHUNK) for k, p in enumerate(pmf))
        alone = max(0.0, got.calls - chunks / got.step)
        own = fleet.breakers * got.own
        depth = max(1, min(fleet.breakers, round(own / alone))) if alone > 0 else 1
        return cls(got.step, list(itertools.accumulate(pmf)), got.lazy, alone, depth)

    @classmethod
    def fixed(cls, every: float, depth: int) -> FlushPlan:
        """``depth`` breakers flushed at every wake (the constants under load)."""
        return cls(every, [0.0] * depth + [1.0])

    def draw(self, rng: random.Random) -> int:
        return min(len(self.cdf) - 1, bisect.bisect_left(self.cdf, rng.random()))


@dataclass(frozen=True)
class ReplaySpec:
    """What every worker of a replayed fleet sends."""

    fleet: Fleet
    capture: Capture
    channel: str  # the prefix's event channel, which each replayed process subscribes
    seed: int
    warm: float
    window: float
    plan: FlushPlan | None = None  # strategy "synced"


def per_tick(fleet: Fleet) -> int:
    """Breakers one process flushes per tick (batched), on average."""
    flushes, _lazy = batched_rates(fleet.calls, fleet.sync_interval)
    return max(1, round(fleet.breakers * flushes * BATCH_TICK * fleet.sync_interval))


class _Conn:
    """One replayed process's command connection: one request (or one pipeline) in
    flight at a time, the rest queued in order, as a single-threaded process sends."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = hiredis.Reader()
        self.queue: list[tuple[bytes, int]] = []  # (bytes, replies it asks for)
        self.waiting = 0

    def push(self, data: bytes, replies: int) -> None:
        self.queue.append((data, replies))
        if not self.waiting:
            self._send_next()

    def _send_next(self) -> None:
        data, replies = self.queue.pop(0)
        self.sock.sendall(data)
        self.waiting = replies

    def readable(self) -> tuple[int, int]:
        """Read what arrived: (replies, error replies)."""
        self.reader.feed(self.sock.recv(1 << 16))
        got = errors = 0
        while (reply := self.reader.gets()) is not False:
            got += 1
            errors += isinstance(reply, hiredis.ReplyError)
            self.waiting -= 1
            if not self.waiting and self.queue:
                self._send_next()
        return got, errors


def _subscriber(host: str, port: int, channel: str) -> socket.socket:
    sock = socket.create_connection((host, port))
    raw = channel.encode()
    sock.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(raw), raw))
    sock.setblocking(False)
    return sock


def _replay_worker(url: str, procs: range, start_at: Any, out: Any, spec: ReplaySpec) -> None:
    try:
        out.put(("done", _replay_fleet(url, procs, start_at, out, spec)))
    except Exception as exc:
        out.put(("error", f"{type(exc).__name__}: {exc}"))


def _replay_fleet(
    url: str, procs: range, start_at: Any, out: Any, spec: ReplaySpec
) -> dict[str, Any]:
    parts = urlsplit(url)
    if parts.scheme != "redis":  # raw sockets: no TLS, no unix socket, no Cluster
        raise ValueError(f"replayed fleets need a redis://host:port URL, not {parts.scheme}://")
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    fleet = spec.fleet
    rng = random.Random(spec.seed * 104729 + procs.start)
    conns = [_Conn(host, port) for _ in procs]
    subs = [_subscriber(host, port, spec.channel) for _ in procs]
    selector = selectors.DefaultSelector()
    for conn in conns:
        selector.register(conn.sock, selectors.EVENT_READ, conn)
    for sock in subs:
        selector.register(sock, selectors.EVENT_READ, None)
    captured, flushes = spec.capture.breakers, spec.capture.flushes
    plan = spec.plan
    batched = plan is not None or fleet.strategy == "batched"
    b_count = fleet.breakers
    lazy_rate = alone_rate = 0.0  # per process: lazy syncs, flushes off the steps
    batch, replies = b"", 0
    if plan is not None:  # one breaker_flush per CHUNK due breakers, at each step
        every, lazy_rate, alone_rate = plan.every, b_count * plan.lazy, plan.alone
    elif batched:  # the library's report calls, pipelined
        every = BATCH_TICK * fleet.sync_interval
        _flushes, lazy = batched_rates(fleet.calls, fleet.sync_interval)
        active = per_tick(fleet)
        batch, replies = b"".join(c.batched for c in captured[:active]), active
        lazy_rate = b_count * lazy
    else:
        every = 1.0 / max(1e-9, sync_rate(fleet.calls, fleet.failure_share, fleet.sync_interval))
    record_rate = b_count * fleet.calls * fleet.failure_share  # per process
    out.put(("ready", os.getpid()))
    start = wait_start(start_at)
    measure_from, end = start + spec.warm, start + spec.warm + spec.window
    # (when, conn, breaker): breaker -1 is a syncer step or a batched flush, -2 a
    # recorded failure, -3 a lazy sync of a breaker the syncer or flusher left alone,
    # -4 a syncer call off the steps.
    heap: list[tuple[float, int, int]] = []
    for k in range(len(conns)):
        if batched:
            heap.append((start + rng.uniform(0.0, every), k, -1))
        else:
            heap += [(start + rng.uniform(0.0, every), k, j) for j in range(b_count)]
        if record_rate > 0:
            heap.append((start + rng.expovariate(record_rate), k, -2))
        if lazy_rate > 0:
            heap.append((start + rng.expovariate(lazy_rate), k, -3))
        if alone_rate > 0:
            heap.append((start + rng.expovariate(alone_rate), k, -4))
    heapq.heapify(heap)
    sent = errors = late = 0
    cpu0 = os.times()
    while True:
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            when, k, j = heapq.heappop(heap)
            conn = conns[k]
            if j == -1 and plan is not None:
                due, n, later = plan.draw(rng), 0, when + every
                while due > 0:  # one call per CHUNK breakers, one after the other
                    conn.push(flushes[min(due, CHUNK)], 1)
                    due, n = due - CHUNK, n + 1
            elif j == -1:
                conn.push(batch, replies)
                n, later = replies, when + every
            elif j == -2:
                conn.push(captured[rng.randrange(b_count)].record, 1)
                n, later = 1, when + rng.expovariate(record_rate)
            elif j == -4 and plan is not None:
                conn.push(flushes[min(plan.alone_depth, CHUNK)], 1)
                n, later = 1, when + rng.expovariate(alone_rate)
            elif j == -3:
                conn.push(captured[rng.randrange(b_count)].sync, 1)
                n, later = 1, when + rng.expovariate(lazy_rate)
            else:
                conn.push(captured[j].sync, 1)
                n, later = 1, when + every * rng.uniform(0.5, 1.5)
            if when >= measure_from:
                sent += n
                late += now - when > 0.1
            if later < end:
                heapq.heappush(heap, (later, k, j))
        if now >= end and not any(c.waiting for c in conns):
            break
        timeout = max(0.0, min((heap[0][0] if heap else end) - now, end - now, 0.05))
        for key, _ in selector.select(timeout):
            if key.data is None:
                with contextlib.suppress(BlockingIOError):  # events: read and discarded
                    key.fileobj.recv(1 << 16)  # type: ignore[union-attr]
                continue
            _got, bad = key.data.readable()
            errors += bad
    cpu1 = os.times()
    selector.close()
    for conn in conns:
        conn.sock.close()
    for sock in subs:
        sock.close()
    if errors:
        raise RuntimeError(f"{errors} replayed requests were refused")
    return {"requests": sent, "late": late,
            "client_cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)}  # fmt: skip


def run_replay(
    url: str, fleet: Fleet, capture: Capture, *, channel: str, warm: float, window: float,
    workers: int, seed: int = 1, plan: FlushPlan | None = None,
) -> Run:  # fmt: skip
    """Replay ``fleet``'s requests at the model's rates (strategy ``synced``: ``plan``,
    by default the model's); the server's counters over the window."""
    if len(capture) < fleet.breakers or len(capture.flushes) <= min(fleet.breakers, CHUNK):
        raise ValueError(f"{len(capture)} breakers captured, the fleet has {fleet.breakers}")
    if plan is None and fleet.strategy == "synced":
        plan = FlushPlan.of(fleet)
    spec = ReplaySpec(fleet, capture, channel, seed, warm, window, plan)
    return drive(url, _replay_worker, split(fleet.processes, workers), (spec,), warm, window)
