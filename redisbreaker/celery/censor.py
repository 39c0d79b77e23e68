"""Keep ``redisbreaker_url`` out of ``celery report`` and ``celery inspect conf``.

Celery censors a setting when its key matches ``celery.app.utils.HIDDEN_SETTINGS``
(API, TOKEN, KEY, SECRET, PASS, ...) and treats ``broker_url`` and result backend URLs
specially; ``redisbreaker_url`` matches none of them, so its password would be shown.
Celery reads that pattern when it filters (``Settings.table()``, used by both
commands), so adding our key to it is the hook: the value is shown as ``********``,
exactly as Celery shows its other secrets. Done on import of
:mod:`redisbreaker.celery`, in every process that loads the integration.
"""

from __future__ import annotations

import re
from typing import Any

import celery.app.utils

# celery-types does not declare the module's constants.
_utils: Any = celery.app.utils

CENSORED_KEYS = ("REDISBREAKER_URL",)


def censor_settings() -> None:
    """Add our secret settings to Celery's censoring pattern (idempotent)."""
    current = _utils.HIDDEN_SETTINGS
    if all(current.search(key) for key in CENSORED_KEYS):
        return
    extra = "|".join(re.escape(key) for key in CENSORED_KEYS)
    _utils.HIDDEN_SETTINGS = re.compile(f"{current.pattern}|{extra}", re.IGNORECASE)
