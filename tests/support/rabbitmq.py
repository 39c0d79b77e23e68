"""A private ``rabbitmq-server`` on loopback ports, for the AMQP tests.

Uses the Debian package's ``rabbitmq-server`` (``make test`` installs it); no systemd
and no service of the machine is touched: the node gets its own name, ports, data and
log directories, Erlang cookie (``HOME``) and epmd port, and is stopped by pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from redisbreaker.testing.servers import free_port


class RabbitStartError(RuntimeError):
    """rabbitmq-server could not be started; the message holds its output."""


def _binary() -> str:
    # The /usr/sbin wrapper switches to the rabbitmq user with su; the real script
    # runs as whoever calls it, which is what a private node needs.
    for candidate in ("/usr/lib/rabbitmq/bin/rabbitmq-server", shutil.which("rabbitmq-server")):
        if candidate and Path(candidate).exists():
            return candidate
    raise RabbitStartError(
        "rabbitmq-server not found: install the Debian package (apt-get install rabbitmq-server)"
    )


@dataclass
class RabbitServer:
    """One private RabbitMQ node; ``url`` is its AMQP URL once started."""

    port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    epmd_port: int = field(default_factory=free_port)
    nodename: str = field(default_factory=lambda: f"rb{uuid.uuid4().hex[:8]}@localhost")
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rb-rabbit-")))
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def env(self) -> dict[str, str]:
        plugins = self.workdir / "enabled_plugins"
        plugins.write_text("[].\n")
        conf_env = self.workdir / "rabbitmq-env.conf"
        conf_env.write_text("")
        config = self.workdir / "rabbitmq.conf"
        config.write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n")
        return {
            **os.environ,
            "HOME": str(self.workdir),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_MNESIA_BASE": str(self.workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.workdir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            "RABBITMQ_CONF_ENV_FILE": str(conf_env),
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_PID_FILE": str(self.workdir / "rabbit.pid"),
            "RABBITMQ_LOGS": "-",
        }

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "server.out").read_text(errors="replace")[-4000:]
        return ""

    def start(self, timeout: float = 90.0) -> RabbitServer:
        import amqp

        env = self.env()
        with (self.workdir / "server.out").open("wb") as out:
            self.process = subprocess.Popen(
                [_binary()], env=env, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.workdir, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RabbitStartError(
                    f"rabbitmq-server exited with {self.process.returncode}:\n{self.log()}"
                )
            try:
                conn = amqp.Connection(host=f"127.0.0.1:{self.port}", connect_timeout=1)
                conn.connect()
                conn.close()
                return self
            except Exception:
                time.sleep(0.3)
        self.stop()
        raise RabbitStartError(f"rabbitmq-server not ready in {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        # epmd daemonizes out of our process group: stop the one on our private port.
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                ["epmd", "-port", str(self.epmd_port), "-kill"],
                capture_output=True, timeout=5, check=False,
            )  # fmt: skip
        shutil.rmtree(self.workdir, ignore_errors=True)
