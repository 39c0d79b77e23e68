"""A counter bumped in every forked child, so objects notice a fork with one read.

Reading ``os.getpid()`` is a system call; the breaker's hot path cannot afford one per
call, and it needs to know when it runs in a child: threads (the pub/sub hub's) and
locks held at fork time do not survive into it.
"""

from __future__ import annotations

import os

epoch = 0


def _after_fork_in_child() -> None:
    global epoch
    epoch += 1


os.register_at_fork(after_in_child=_after_fork_in_child)
