"""The asyncio API: the same objects, with ``await``; they share the sync ones' core."""

from __future__ import annotations

from redisbreaker.aio.breaker import SharedBreaker
from redisbreaker.aio.transaction import Transaction

__all__ = ["SharedBreaker", "Transaction"]
