"""One worker whose GPU died, among two healthy ones: real Celery workers.

Without a breaker the broken worker fails each task in milliseconds and so takes most
of the queue. With ``@shared_breaker(scope="worker", pause="worker",
retry_on_failure=True)`` it stops fetching after ``fail_max`` failures, tries one task
per open period, and every task it failed is re-sent to a healthy worker: none is lost.

    python examples/broken_worker.py

starts the three workers itself, on ``REDISBREAKER_URL`` or a private redis-server.
(``benchmarks/broken_worker.py`` measures the same scenario without the breaker and
with the per-host approach it replaces.)
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import cast

import redis
from celery import Celery, current_task

import redisbreaker.celery
from redisbreaker.celery import shared_breaker

BROKER = os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0")
NS = os.environ.get("EXAMPLE_NS", "broken-worker")

app = Celery("broken_worker", broker=BROKER)
app.conf.update(
    task_default_queue=NS,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    redisbreaker_prefix=f"{NS}:",
)
redisbreaker.celery.install(app)


@shared_breaker(scope="worker", pause="worker", fail_max=2, reset_timeout=2,
                retry_on_failure=True)  # fmt: skip
@app.task(name="example.render", max_retries=None)
def render(job: int) -> int:
    notes = redis.Redis.from_url(BROKER)
    notes.hincrby(f"{NS}:ran", str(current_task.request.hostname))
    if os.environ.get("EXAMPLE_BROKEN"):
        raise RuntimeError("CUDA error: no device (the GPU is gone)")
    time.sleep(0.5)  # the real work
    notes.sadd(f"{NS}:done", job)
    return job


def main(jobs: int = 20) -> None:
    from redisbreaker.testing import CeleryWorker
    from redisbreaker.testing.servers import embedded_url

    ns = f"broken-worker-{uuid.uuid4().hex[:6]}"
    with embedded_url() as url:
        env = {"EXAMPLE_NS": ns, "PYTHONPATH": str(Path(__file__).parent)}
        workers = [
            CeleryWorker(
                "broken_worker",
                broker_url=url,
                name=f"{ns}-{role}",
                env={**env, "EXAMPLE_BROKEN": "1"} if role == "broken" else env,
                extra_args=["-O", "fair"],
            )
            for role in ("broken", "healthy1", "healthy2")
        ]
        for w in workers:
            w.start()
        try:
            sender = Celery("sender", broker=url)
            for job in range(jobs):
                sender.send_task("example.render", args=[job], queue=ns)
            notes = redis.Redis.from_url(url)
            deadline = time.monotonic() + 120
            while notes.scard(f"{ns}:done") < jobs and time.monotonic() < deadline:
                time.sleep(0.1)
            counts = cast(dict[bytes, bytes], notes.hgetall(f"{ns}:ran"))
            ran = {k.decode(): int(v) for k, v in counts.items()}
            print(f"{jobs} jobs, one broken worker (fails at once), two healthy (0.5 s a job):")
            for w in workers:
                print(f"  {w.name:32} ran {ran.get(w.hostname, 0):3}")
            done = int(notes.scard(f"{ns}:done"))
            print(f"  succeeded {done} of {jobs}; lost {jobs - done}")
            if done != jobs:
                raise SystemExit("example: some jobs never succeeded")
        finally:
            for w in workers:
                w.stop()


if __name__ == "__main__":
    main()
