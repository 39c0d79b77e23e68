"""A listener in a process of its own, for the Sentinel failover drill.

``python -m tests.support.sentinel_listener URL NAME CLIENT_NAME`` subscribes to the
transitions of breaker ``NAME`` on the Redis that ``URL`` names (its connections are
called ``CLIENT_NAME``), prints ``ready`` once its pub/sub subscription is confirmed,
then one ``transition OLD->NEW`` line per transition it sees, until stdin closes.
"""

from __future__ import annotations

import sys
import time

import redisbreaker
from redisbreaker import SharedBreaker
from redisbreaker.events import hub_for
from redisbreaker.state import Transition


def main() -> None:
    url, name, client_name = sys.argv[1:4]
    redisbreaker.configure(url=url, client_name=client_name)
    breaker = SharedBreaker(name)

    def show(t: Transition) -> None:
        print(f"transition {t.old.value}->{t.new.value}", flush=True)

    breaker.subscribe(show)
    breaker.connect()
    hub = hub_for(breaker.client)
    deadline = time.monotonic() + 60
    while not hub.connected.is_set():
        if time.monotonic() > deadline:
            print("no subscription in 60 s", flush=True)
            sys.exit(1)
        time.sleep(0.01)
    print("ready", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
