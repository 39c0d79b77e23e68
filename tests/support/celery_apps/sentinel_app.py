"""A worker app on a Sentinel broker with no ``redisbreaker_url``: its breakers must
find Redis through the broker (kombu's ``sentinel://`` spelling plus ``master_name``).

``CELERY_BROKER_URL`` is the broker; ``RB_MASTER`` the Sentinel service name;
``RB_SENTINEL_PASSWORD`` the sentinels' password, if any; ``RB_NS`` namespaces the queue
and the key prefix.
"""

from __future__ import annotations

import os

from celery import Celery

import redisbreaker.celery
from redisbreaker.celery import shared_breaker

NS = os.environ.get("RB_NS", "sentinel")
TRANSPORT: dict[str, object] = {"master_name": os.environ.get("RB_MASTER", "rbmaster")}
if os.environ.get("RB_SENTINEL_PASSWORD"):
    TRANSPORT["sentinel_kwargs"] = {"password": os.environ["RB_SENTINEL_PASSWORD"]}

app = Celery("sentinel_app", broker=os.environ.get("CELERY_BROKER_URL"))
app.conf.update(
    broker_transport_options=TRANSPORT,
    task_default_queue=NS,
    redisbreaker_prefix=f"{NS}:",
    broker_connection_retry_on_startup=True,
)
redisbreaker.celery.install(app)


@shared_breaker("sentinel-flaky", scope="cluster", fail_max=1, reset_timeout=600, on_open="fail")
@app.task(name="sentinel.flaky")
def flaky(i: int) -> int:
    """Calls a downstream service that is down: the first failure trips the breaker."""
    raise RuntimeError(f"downstream is down ({i})")
