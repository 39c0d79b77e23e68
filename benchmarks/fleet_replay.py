"""Replayed fleets for the ``fleet`` suite: the library's own request bytes, at the model's rates.

A real script call costs a Python process ~80 µs of its own CPU, so the library-driven
fleets (``benchmarks/fleet_sim.py``) cannot load Redis to half a core on a small
machine. Here :func:`capture` records the exact bytes the library sends for a lazy
sync and for a recorded failure of each breaker (whatever the command: EVALSHA or
FCALL), and :func:`run_replay` sends them on P raw connections, one request (or one
pipeline) in flight per connection as a single-threaded process has, at the rates
:mod:`benchmarks.fleet_model` names; each replayed process also holds a subscriber
connection, as its hub would. A replayed request costs the client a few µs, so one
core of client drives Redis to the model's 50% point. Strategy ``flush`` sends
:data:`PROTOTYPE_FLUSH` with all of a process's due breakers,
once per tick.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import random
import selectors
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import hiredis
import redis

from benchmarks.fleet_model import BATCH_TICK, Fleet, batched_rates, sync_rate
from benchmarks.fleet_sim import NEVER, Run, boom, drive, ok, split, wait_start
from redisbreaker.bench import SCRIPT_COMMANDS, Boom
from redisbreaker.breaker import SharedBreaker
from redisbreaker.config import client_from_url

# Not the library's: the least one call that flushes many breakers' successes must do,
# to size the proposed design before it is built. Per breaker: read its generation
# and state, count the successes if the generation is the one the caller counted them
# in, end a failure streak, renew the TTL, and answer generation and state (the view).
# KEYS: the breakers' state hashes; ARGV: [1..n] each one's generation as the caller
# saw it, [n+1..2n] its successes.
PROTOTYPE_FLUSH = """
local out, n = {}, #KEYS
for i = 1, n do
  local s = redis.call('HMGET', KEYS[i], 'gen', 'st', 'consec')
  if s[1] == ARGV[i] then
    redis.call('HINCRBY', KEYS[i], 'n_ok', ARGV[n + i])
    if s[3] and s[3] ~= '0' then redis.call('HSET', KEYS[i], 'consec', 0) end
  end
  redis.call('PEXPIRE', KEYS[i], 604800000)
  out[2 * i - 1], out[2 * i] = s[1], s[2]
end
return out
"""


def resp(*args: str | bytes | int) -> bytes:
    """A command in RESP, as a client sends it."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def prototype_args(client: redis.Redis, keys: list[str]) -> list[Any]:
    """One :data:`PROTOTYPE_FLUSH` call for ``keys`` (state hashes), each at its current
    generation with one success: the command and its arguments."""
    sha = client.script_load(PROTOTYPE_FLUSH)
    gens = [client.hget(k, "gen") or b"0" for k in keys]
    return ["EVALSHA", sha, len(keys), *keys, *gens, *(["1"] * len(keys))]


@dataclass(frozen=True)
class Captured:
    """The exact bytes the library sent for one breaker's lazy sync and for one of its
    recorded failures (whatever the command: EVALSHA or FCALL)."""

    sync: bytes
    record: bytes
    state_key: str  # the breaker's state hash (for the prototype flush)


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


def capture(url: str, prefix: str, breakers: int, sync_interval: float) -> list[Captured]:
    """One :class:`Captured` per breaker ``svc-<j>`` of ``prefix``, taken in steady state
    (each operation done twice, the second one kept: a first call may carry what Redis
    does not know yet)."""
    client = client_from_url(url, max_connections=4)
    recorder = _Recorder(client)
    out = []
    try:
        for j in range(breakers):
            b = SharedBreaker(f"svc-{j}", client=client, prefix=prefix, fail_max=NEVER,
                              sync_interval=sync_interval)  # fmt: skip
            sync = record = b""
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
            out.append(Captured(sync, record, b.keys[0]))
    finally:
        client.close()
    return out


@dataclass(frozen=True)
class ReplaySpec:
    """What every worker of a replayed fleet sends."""

    fleet: Fleet
    captured: list[Captured]
    channel: str  # the prefix's event channel, which each replayed process subscribes
    seed: int
    warm: float
    window: float
    flush: bytes = b""  # strategy "flush": the one call flushing a tick's breakers


def per_tick(fleet: Fleet) -> int:
    """Breakers one process flushes per tick (batched strategies), on average."""
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
    batched = fleet.strategy != "lazy"
    b_count = fleet.breakers
    lazy_rate = 0.0  # per process: lazy syncs besides the batched flushes
    if batched:
        every = BATCH_TICK * fleet.sync_interval
        _flushes, lazy = batched_rates(fleet.calls, fleet.sync_interval)
        active = per_tick(fleet)
        if fleet.strategy == "flush":  # one call, one reply
            batch, replies = spec.flush, 1
        else:  # the library's calls, pipelined
            batch, replies = b"".join(c.sync for c in spec.captured[:active]), active
        lazy_rate = b_count * lazy
    else:
        every = 1.0 / max(1e-9, sync_rate(fleet.calls, fleet.failure_share, fleet.sync_interval))
    record_rate = b_count * fleet.calls * fleet.failure_share  # per process
    out.put(("ready", os.getpid()))
    start = wait_start(start_at)
    measure_from, end = start + spec.warm, start + spec.warm + spec.window
    # (when, conn, breaker): breaker -1 is a batched flush, -2 a recorded failure, -3 a
    # lazy sync of a breaker the flusher left alone.
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
    heapq.heapify(heap)
    sent = errors = late = 0
    cpu0 = os.times()
    while True:
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            when, k, j = heapq.heappop(heap)
            conn = conns[k]
            if j == -1:
                conn.push(batch, replies)
                n, later = replies, when + every  # script calls: 1 for a multi-breaker flush
            elif j == -2:
                conn.push(spec.captured[rng.randrange(b_count)].record, 1)
                n, later = 1, when + rng.expovariate(record_rate)
            elif j == -3:
                conn.push(spec.captured[rng.randrange(b_count)].sync, 1)
                n, later = 1, when + rng.expovariate(lazy_rate)
            else:
                conn.push(spec.captured[j].sync, 1)
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
    url: str, fleet: Fleet, captured: list[Captured], *, channel: str, warm: float,
    window: float, workers: int, seed: int = 1,
) -> Run:  # fmt: skip
    """Replay ``fleet``'s requests at the model's rates; the server's counters over the window."""
    if len(captured) < fleet.breakers:
        raise ValueError(f"{len(captured)} breakers captured, the fleet has {fleet.breakers}")
    flush = b""
    if fleet.strategy == "flush":
        client = redis.Redis.from_url(url)
        try:
            keys = [c.state_key for c in captured[: per_tick(fleet)]]
            flush = resp(*prototype_args(client, keys))
        finally:
            client.close()
    spec = ReplaySpec(fleet, captured, channel, seed, warm, window, flush)
    return drive(url, _replay_worker, split(fleet.processes, workers), (spec,), warm, window)
