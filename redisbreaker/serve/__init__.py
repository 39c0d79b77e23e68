"""``redisbreaker serve``: the live operator dashboard (and ``/metrics`` beside it).

Needs the ``serve`` extra: ``pip install 'redisbreaker[serve]'``.
"""

from __future__ import annotations

import socket
from typing import Any

try:
    import starlette  # noqa: F401
    import uvicorn
except ImportError as missing:  # pragma: no cover - the message is the point
    raise ImportError(
        "redisbreaker.serve needs Starlette and uvicorn: pip install 'redisbreaker[serve]'"
    ) from missing

from redisbreaker.fleet import Fleet
from redisbreaker.serve.app import EventFeed, create_app

__all__ = ["create_app", "run"]


def run(
    fleet: Fleet,
    *,
    host: str = "127.0.0.1",
    port: int = 8750,
    allow_control: bool = False,
    token: str | None = None,
    metrics_app: Any = None,
) -> None:
    """Serve the dashboard of ``fleet`` with uvicorn until interrupted (blocking).

    Binds loopback by default: the page shows the whole fleet, and with control on it
    can stop it, so exposing it is a decision to make explicitly.
    """
    app = create_app(fleet, allow_control=allow_control, token=token, metrics_app=metrics_app)
    config = uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=2)
    server = _Server(config, app.state.feed)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C once it has shut down cleanly
        pass
    if not server.started:
        raise SystemExit(3)  # as uvicorn.run: the port could not be bound (already logged)


class _Server(uvicorn.Server):
    """uvicorn's server, ending the open pages' event streams when it stops: each
    would otherwise hold it for the whole graceful-shutdown timeout."""

    def __init__(self, config: uvicorn.Config, feed: EventFeed) -> None:
        super().__init__(config)
        self.feed = feed

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.feed.close_streams()
        await super().shutdown(sockets)
