"""Pub/sub on a 3-master Redis Cluster: a broadcast PUBLISH next to a sharded SPUBLISH.

On a private Cluster (every node's ``INFO cpu`` must be read), B objects spread over
hash slots send events, and P subscribers each hear all of them, in two modes:

* ``PUBLISH (broadcast)``, the design before sharding: one channel per prefix, every
  subscriber on the master owning that channel's slot (where redis-py's
  ``ClusterPubSub`` puts it); the Cluster bus carries each message to every node.
* ``SPUBLISH (sharded)``, the library's design on Redis 7+: one channel per hash slot
  (keys.py); each subscriber SSUBSCRIBEs the objects' slot channels on their masters,
  and a message stays in its shard.

Both publish from inside a script, on the object's master, as the library's scripts do
(``redis.call(cmd, channel, payload)``, a payload the size of a breaker event), and
deliver the same messages (P per event). The modes run interleaved over rounds, under
the same client load (pipelined EVALSHA, one thread per master); per mode: events per
second carried until every subscriber has read every message, and server CPU per
event (``used_cpu_user + used_cpu_sys`` summed over the three masters, divided by the
events). Subscribers read raw sockets and discard the bytes, so they cost the client
almost nothing.

Run alone: ``python -m benchmarks.cluster_pubsub [--tiny]`` (``--url`` is ignored).
"""

from __future__ import annotations

import random
import selectors
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis
from redis.crc import key_slot

from benchmarks.harness import Config, SuiteResult, check, fmt, run_alone
from redisbreaker.keys import KeySpace
from redisbreaker.testing.servers import RedisCluster, RedisServer

SCRIPT = "return redis.call(ARGV[1], ARGV[2], ARGV[3])"
PAYLOAD = b"e" * 56  # a breaker event is 50 to 60 bytes of msgpack
MODES = {"PUBLISH (broadcast)": "PUBLISH", "SPUBLISH (sharded)": "SPUBLISH"}


def _resp(*args: str | bytes) -> bytes:
    """A command in RESP, as a client sends it."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def _message_bytes(kind: str, channel: str) -> int:
    """The size of one delivered message (``message``/``smessage``) in RESP."""
    return len(_resp(kind, channel, PAYLOAD))


@dataclass
class Subscribers:
    """Raw subscriber connections, drained by one thread that counts the bytes."""

    sockets: list[socket.socket] = field(default_factory=list)
    received: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    confirmations: int = 0  # bytes of the subscription replies, counted in received

    def connect(self, port: int, kind: str, groups: Sequence[Sequence[str]]) -> None:
        """One connection subscribing (``kind``) each group of channels by one command."""
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"".join(_resp(kind.upper(), *group) for group in groups))
        count = 0
        for group in groups:
            for channel in group:
                count += 1
                self.confirmations += len(_resp(kind, channel)) + len(b":%d\r\n" % count)
        sock.setblocking(False)
        self.sockets.append(sock)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        selector = selectors.DefaultSelector()
        for sock in self.sockets:
            selector.register(sock, selectors.EVENT_READ, sock)
        while not self._stop.is_set():
            for key, _ in selector.select(0.1):
                sock = key.data  # registered with itself as the data
                try:
                    chunk = sock.recv(1 << 20)
                except BlockingIOError:
                    continue
                self.received += len(chunk)
        selector.close()

    def wait_for(self, total: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.received < total and time.monotonic() < deadline:
            time.sleep(0.002)
        return self.received >= total

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for sock in self.sockets:
            sock.close()


@dataclass
class Setup:
    cluster: RedisCluster
    prefix: str
    keys: list[str]  # one key per object, in its slot
    owners: dict[str, RedisServer]  # key -> its master
    sha: str


def _cpu(cluster: RedisCluster) -> float:
    total = 0.0
    for node in cluster.alive():
        with node.client() as client:
            info = client.info("cpu")
        total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


def _counts(cluster: RedisCluster, sub: str, channels: Sequence[str]) -> int:
    """Subscriptions to ``channels`` over the masters (``PUBSUB NUMSUB``/``SHARDNUMSUB``)."""
    total = 0
    for node in cluster.alive():
        with node.client() as client:
            reply = client.execute_command("PUBSUB", sub, *channels)
        total += sum(int(n) for n in reply[1::2])
    return total


def _subscribe(setup: Setup, command: str, listeners: int) -> tuple[Subscribers, list[str]]:
    """``listeners`` subscribers hearing every object; the channel each event goes to."""
    subs = Subscribers()
    if command == "PUBLISH":
        channel = KeySpace.of(setup.prefix, "cb", "x").channel()
        owner = setup.cluster.master_of(channel)
        for _ in range(listeners):
            subs.connect(owner.port, "subscribe", [[channel]])
        channels = [channel] * len(setup.keys)
        expected, sub = listeners, "NUMSUB"
        unique = [channel]
    else:
        channels = [_slot_channel(setup.prefix, key) for key in setup.keys]
        by_node: dict[int, dict[int, set[str]]] = {}
        for key, ch in zip(setup.keys, channels, strict=True):
            by_node.setdefault(setup.owners[key].port, {}).setdefault(
                key_slot(ch.encode()), set()
            ).add(ch)
        for _ in range(listeners):
            for port, slots in by_node.items():
                subs.connect(port, "ssubscribe", [sorted(chs) for chs in slots.values()])
        unique = sorted(set(channels))
        expected, sub = listeners * len(unique), "SHARDNUMSUB"
    deadline = time.monotonic() + 30
    while _counts(setup.cluster, sub, unique) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{command}: subscriptions not confirmed")
        time.sleep(0.01)
    subs.start()
    return subs, channels


def _slot_channel(prefix: str, key: str) -> str:
    tag = key[key.index("{") + 1 : key.index("}")]
    return KeySpace(prefix, "cb", tag).channel(sharded=True)


def _publish(setup: Setup, command: str, channels: list[str], events: int) -> None:
    """``events`` script calls, spread over the objects, one pipelining thread per master."""
    work: dict[int, list[tuple[str, str]]] = {}
    for i in range(events):
        j = i % len(setup.keys)
        key = setup.keys[j]
        work.setdefault(setup.owners[key].port, []).append((key, channels[j]))

    def send(port: int, items: list[tuple[str, str]]) -> None:
        with redis.Redis(port=port) as client:
            for start in range(0, len(items), 200):
                pipe = client.pipeline(transaction=False)
                for key, channel in items[start : start + 200]:
                    pipe.evalsha(setup.sha, 1, key, command, channel, PAYLOAD)
                pipe.execute()

    threads = [threading.Thread(target=send, args=item) for item in work.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def measure(setup: Setup, command: str, events: int, listeners: int) -> dict[str, float]:
    """One mode, once: events per second carried and server CPU µs per event."""
    subs, channels = _subscribe(setup, command, listeners)
    kind = "message" if command == "PUBLISH" else "smessage"
    per_round = [_message_bytes(kind, channels[i % len(channels)]) for i in range(events)]
    expected = subs.confirmations + listeners * sum(per_round)
    try:
        cpu0, t0 = _cpu(setup.cluster), time.perf_counter()
        _publish(setup, command, channels, events)
        if not subs.wait_for(expected, 120):
            raise RuntimeError(f"{command}: {subs.received} of {expected} bytes delivered")
        seconds = time.perf_counter() - t0
        time.sleep(0.2)  # the other nodes finish handling the bus messages
        cpu = _cpu(setup.cluster) - cpu0
    finally:
        subs.close()
    return {"events_per_s": events / seconds, "cpu_us_per_event": cpu / events * 1e6}


def run(cfg: Config) -> SuiteResult:
    objects = cfg.pick(64, 16)
    events = cfg.pick(60_000, 3_000)
    listeners = cfg.pick(8, 2)
    rounds = cfg.pick(5, 1)
    result = SuiteResult(
        "cluster_pubsub",
        "Pub/sub on a 3-master Redis Cluster: broadcast PUBLISH vs sharded SPUBLISH",
        ["mode", "events/s", "server CPU µs/event", "events/s vs PUBLISH", "CPU vs PUBLISH"],
    )
    with RedisCluster(masters=3) as cluster:
        prefix = f"rbbench{uuid.uuid4().hex[:6]}:"
        keys = [KeySpace.of(prefix, "cb", f"svc-{i}").key("s") for i in range(objects)]
        owners = {key: cluster.master_of(key) for key in keys}
        shas = set()
        for node in cluster.nodes:
            with node.client() as client:
                shas.add(client.script_load(SCRIPT))
        setup = Setup(cluster, prefix, keys, owners, shas.pop())
        with cluster.nodes[0].client() as client:
            version = str(client.info("server")["redis_version"])
        samples: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
        measure(setup, "SPUBLISH", min(events, 1000), 1)  # warm up: scripts, connections
        for _ in range(rounds):
            order = list(MODES)
            random.shuffle(order)
            for mode in order:
                samples[mode].append(measure(setup, MODES[mode], events, listeners))
    med = {
        mode: {k: statistics.median(s[k] for s in runs) for k in runs[0]}
        for mode, runs in samples.items()
    }
    base = med["PUBLISH (broadcast)"]
    for mode, m in med.items():
        result.rows.append([
            mode, fmt(m["events_per_s"], 0), fmt(m["cpu_us_per_event"], 1),
            f"{m['events_per_s'] / base['events_per_s']:.2f}x",
            f"{m['cpu_us_per_event'] / base['cpu_us_per_event']:.2f}x",
        ])  # fmt: skip
    sharded = med["SPUBLISH (sharded)"]
    cpu_ratio = base["cpu_us_per_event"] / sharded["cpu_us_per_event"]
    rate_ratio = sharded["events_per_s"] / base["events_per_s"]
    result.targets = [
        check("server CPU per event, PUBLISH / SPUBLISH", "> 1x (sharding saves CPU)",
              cpu_ratio, lambda x: x > 1.0),
    ]  # fmt: skip
    result.notes = [
        f"Redis {version}, 3 masters, no replicas; {objects} objects over "
        f"{len({key_slot(k.encode()) for k in keys})} slots, {listeners} subscribers each "
        f"hearing every event, {events} events per mode and round, {rounds} rounds "
        "interleaved, medians.",
        f"SPUBLISH carries {rate_ratio:.2f}x the events per second and costs the servers "
        f"1/{cpu_ratio:.2f} of the CPU per event of a broadcast PUBLISH.",
        "events/s is bounded by the Python publishers on this machine (the same load for "
        "both modes); server CPU per event is the servers' own cost.",
    ]
    result.data = {"median": med, "samples": samples, "cpu_ratio": cpu_ratio,
                   "rate_ratio": rate_ratio, "redis_version": version}  # fmt: skip
    result.chart = {
        "labels": list(med),
        "series": {"server CPU µs/event": [m["cpu_us_per_event"] for m in med.values()]},
        "ylabel": "µs per event (3 masters)",
    }
    return result


def main() -> int:
    return run_alone("cluster_pubsub", run, own_server=True)


if __name__ == "__main__":
    raise SystemExit(main())
