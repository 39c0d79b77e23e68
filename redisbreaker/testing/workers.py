"""Real Celery worker processes for tests and demos.

::

    with CeleryWorker("myproject.celery_app", broker_url=url, pool="prefork", concurrency=2) as w:
        ...               # send tasks; w.log() holds the worker's output
        w.kill()          # SIGKILL the worker and its pool children, as a crash would

The worker is ``python -m celery -A <module> worker`` in its own process group, with
gossip, mingle and heartbeats off (faster start, no cross-talk between test
workers). It gets the broker and result backend through ``CELERY_BROKER_URL`` and
``CELERY_RESULT_BACKEND`` (plus ``REDISBREAKER_URL`` if given) so the app module can
read them. :meth:`start` returns once the worker logs that it is ready, and fails
with the log if it exits or does not get there in time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

READY_MARKER = " ready."


class WorkerStartError(RuntimeError):
    """The worker exited or never logged that it was ready; the message holds its log."""


@dataclass
class CeleryWorker:
    """One ``celery worker`` process (see the module docstring)."""

    app_module: str
    broker_url: str
    backend_url: str | None = None
    pool: str = "prefork"  # prefork, solo or threads
    concurrency: int = 1
    name: str = field(default_factory=lambda: f"w{uuid.uuid4().hex[:8]}")
    queues: Sequence[str] = ()
    redisbreaker_url: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    extra_args: Sequence[str] = ()
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rb-celery-")))
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def hostname(self) -> str:
        """The node name to use with ``app.control.ping(destination=[...])``."""
        return f"{self.name}@{os.uname().nodename}"

    def command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "celery", "-A", self.app_module, "worker",
            f"--pool={self.pool}", "-c", str(self.concurrency), "-n", self.hostname,
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--loglevel=INFO",
        ]  # fmt: skip
        if self.queues:
            cmd += ["-Q", ",".join(self.queues)]
        return cmd + list(self.extra_args)

    def start(self, timeout: float = 60.0) -> CeleryWorker:
        env = {**os.environ, **self.env, "CELERY_BROKER_URL": self.broker_url}
        if self.backend_url:
            env["CELERY_RESULT_BACKEND"] = self.backend_url
        if self.redisbreaker_url:
            env["REDISBREAKER_URL"] = self.redisbreaker_url
        # The worker must import the app module the same way we do.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (os.getcwd(), env.get("PYTHONPATH", "")) if p
        )
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: kill() reaches the pool
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise WorkerStartError(
                    f"celery worker {self.name} exited with {self.process.returncode}:\n"
                    + self.log()
                )
            if READY_MARKER in self.log():
                return self
            time.sleep(0.05)
        self.stop()
        raise WorkerStartError(f"celery worker {self.name} not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def kill(self) -> None:
        """SIGKILL the worker and its pool children (its own process group)."""
        self._signal_group(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        """Warm shutdown (SIGTERM); SIGKILL if it has not exited after ``timeout``."""
        if self.process is None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        # Pool children may outlive the main process; end the group for good.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def __enter__(self) -> CeleryWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
