"""A worker app that declares ``pause=`` but forgets ``redisbreaker.celery.install``."""

from __future__ import annotations

import os

from celery import Celery

from redisbreaker.celery import shared_breaker

app = Celery("no_install_app", broker=os.environ.get("CELERY_BROKER_URL"))
app.conf.update(broker_connection_retry_on_startup=True)


@shared_breaker(scope="worker", pause="worker", fail_max=3)
@app.task(name="no_install.render")
def render(job: int) -> int:
    return job
