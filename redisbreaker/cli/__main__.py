"""``python -m redisbreaker.cli``."""

from __future__ import annotations

from redisbreaker.cli import main

raise SystemExit(main())
