"""The operator dashboard: a page, its JSON, a live event stream and guarded controls.

Everything shown is read from Redis through :class:`~redisbreaker.fleet.Fleet`, so
any number of dashboards can run beside the fleet and none holds state of its own
beyond the last 100 pub/sub events. Breaker transitions and transaction decisions
arrive on pub/sub (background threads with the fleet's sync client, see
:class:`~redisbreaker.events.PrefixFeed`) and push a fresh state to every open page at
once; otherwise each page gets one per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any, cast

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from redisbreaker.breaker import SharedBreaker
from redisbreaker.breaker_core import decode_event
from redisbreaker.errors import ConfigurationError, StorageError
from redisbreaker.events import PrefixFeed
from redisbreaker.fleet import PAUSE, Fleet, UnknownBreakerError, join_name, split_name
from redisbreaker.options import open_seconds
from redisbreaker.state import Transition
from redisbreaker.tx_core import Decision
from redisbreaker.tx_waiters import decode

logger = logging.getLogger("redisbreaker.serve")

RECENT = 100  # events kept for pages that connect later
PERIOD = 1.0  # seconds between full states when nothing happens
PAUSE_SCOPES = ("worker", "host", "queue", "cluster")
_STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The page loads nothing but its own files and talks to nothing but its own server.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


class EventFeed:
    """The fleet's pub/sub events: the recent ones, and a wake-up for every open stream.

    Sync threads (a :class:`~redisbreaker.events.PrefixFeed`) rather than
    ``redis.asyncio``, so that the feed uses the very client the fleet was given (plain
    Redis, Cluster or fakeredis alike); on a Cluster it hears every hash slot's channel.
    """

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._lock = threading.Lock()
        self._feed: PrefixFeed | None = None
        self._idle = threading.Event()  # what `connected` is before start(): never set
        self._loop: asyncio.AbstractEventLoop | None = None
        self._streams: set[asyncio.Event] = set()  # touched on the loop's thread only
        self._waking = False  # a wake-up is queued on the loop (resets come in bursts)
        self.closing = False  # the server is stopping: streams end

    @property
    def connected(self) -> threading.Event:
        """Set while every subscription is confirmed."""
        return cast(threading.Event, self._feed.connected if self._feed else self._idle)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._feed = PrefixFeed(
            self.fleet.client, self.fleet.prefix, {"cb": decode_event, "tx": decode},
            self._record, self._announce,  # a (re)subscription: whatever happened shows now
        )  # fmt: skip

    def stop(self) -> None:
        if self._feed is not None:
            self._feed.close()
            self._feed = None

    def recent(self) -> list[dict[str, Any]]:
        """The kept events, newest first."""
        with self._lock:
            return list(reversed(self._recent))

    def listen(self) -> asyncio.Event:
        wake = asyncio.Event()
        self._streams.add(wake)
        return wake

    def unlisten(self, wake: asyncio.Event) -> None:
        self._streams.discard(wake)

    def close_streams(self) -> None:
        """End every event stream (on the loop's thread): a stopping server would
        otherwise wait for every open page to go away."""
        self.closing = True
        self._wake_all()

    def _wake_all(self) -> None:
        self._waking = False
        for wake in self._streams:
            wake.set()

    def _announce(self) -> None:
        loop = self._loop
        if self._waking or loop is None or loop.is_closed():
            return
        self._waking = True
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._wake_all)

    def _record(self, kind: str, message: Any) -> None:
        event = _breaker_event(message) if kind == "cb" else _tx_event(message)
        with self._lock:
            self._recent.append(event)
        self._announce()


def _breaker_event(move: Transition) -> dict[str, Any]:
    name, scope, key = split_name(move.name)
    return {
        "kind": "breaker", "name": name, "scope": scope, "scope_key": key,
        "old": move.old.value, "new": move.new.value, "retry_after": move.retry_after,
        "origin": move.origin, "at_ms": int(time.time() * 1000),
    }  # fmt: skip


def _tx_event(decision: Decision) -> dict[str, Any]:
    return {
        "kind": "transaction", "tx_id": decision.tx_id, "outcome": decision.outcome.value,
        "reason": decision.reason or "", "participant": decision.participant or "",
        "participants": decision.tally.participants, "yes": decision.tally.yes,
        "no": decision.tally.no, "at_ms": decision.decided_at_ms or int(time.time() * 1000),
    }  # fmt: skip


class _Forward:
    """An ASGI app as a route's endpoint (Starlette would call a plain function with a
    request), so that ``/metrics`` answers without a redirect to ``/metrics/``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def _error(status: int, text: str) -> JSONResponse:
    return JSONResponse({"error": text}, status_code=status)


def _text(body: dict[str, Any], field: str, default: str) -> str:
    value = body.get(field, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ConfigurationError(f"{field} must be a string, got {value!r}")
    return value


def _seconds(body: dict[str, Any], required: bool) -> float | None:
    value = body.get("seconds")
    if value is None or value == "":
        if required:
            raise ConfigurationError("seconds is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"seconds must be a number, got {value!r}")
    return open_seconds(value)


def _pause_breaker(fleet: Fleet, scope: str, key: str) -> SharedBreaker:
    """The breaker standing for a manual pause, made if it has no state yet (with the
    settings ``redisbreaker.celery.pause`` uses, so both see the same pause)."""
    try:
        return fleet.handle(PAUSE, scope, key)
    except UnknownBreakerError:
        return SharedBreaker(
            join_name(PAUSE, scope, key), client=fleet.client, prefix=fleet.prefix,
            fail_max=1, reset_timeout=1.0,
        )  # fmt: skip


def _where(body: dict[str, Any]) -> tuple[str, str]:
    scope = _text(body, "scope", "cluster")
    key = _text(body, "key", "")
    if scope == "cluster" and key:
        raise ConfigurationError("the cluster scope has no key")
    return scope, key


def _pause_target(body: dict[str, Any]) -> tuple[str, str, str | None]:
    scope, key = _where(body)
    if scope not in PAUSE_SCOPES:
        raise ConfigurationError(f"scope must be one of {list(PAUSE_SCOPES)}, got {scope!r}")
    if scope != "cluster" and not key:
        raise ConfigurationError(f"a {scope} pause needs a key (the {scope}'s name)")
    return scope, key, _text(body, "reason", "") or None


# What an operator action does: read the request body, act, and name the breaker acted on.
Action = Callable[[dict[str, Any]], tuple[str, str, str]]


class Dashboard:
    """The handlers of every route, over one fleet."""

    def __init__(self, fleet: Fleet, *, control: bool, token: str | None) -> None:
        self.fleet = fleet
        self.control = control
        self.secret = (token or "").encode()
        self.feed = EventFeed(fleet)
        folder = resources.files("redisbreaker.serve").joinpath("static")
        self.static = {name: folder.joinpath(name).read_bytes() for name in _STATIC}

    def state(self) -> dict[str, Any]:
        """What /api/state answers and /events sends (blocking: run it in a thread)."""
        fleet = self.fleet
        return {
            "breakers": [b.as_dict() for b in fleet.breakers()],
            "workers": [w.as_dict() for w in fleet.workers()],
            "transactions": [t.as_dict() for t in fleet.transactions()],
            "dead_letters": [q.as_dict() for q in fleet.dead_letters()],
            "events": self.feed.recent(),
            "control": self.control,
            "server_ms": fleet.server_ms(),
        }

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.feed.start()
        try:
            yield
        finally:
            await run_in_threadpool(self.feed.stop)

    # -- reading -------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        return await self.asset(request, "index.html")

    async def asset(self, request: Request, name: str = "") -> Response:
        name = name or request.path_params["name"]
        if name not in self.static:
            return _error(404, f"no file {name!r}")
        return Response(self.static[name], media_type=_STATIC[name], headers=_HEADERS)

    async def api_state(self, request: Request) -> Response:
        try:
            return JSONResponse(await run_in_threadpool(self.state))
        except StorageError as exc:
            return _error(503, str(exc))

    async def events(self, request: Request) -> Response:
        return StreamingResponse(
            self.stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def stream(self) -> AsyncIterator[str]:
        wake = self.feed.listen()
        last = ""
        try:
            yield f"retry: {int(PERIOD * 1000)}\n\n"  # reconnect soon after a drop
            while not self.feed.closing:
                wake.clear()  # before reading, so an event during the read is not lost
                try:
                    current = await run_in_threadpool(self.state)
                except StorageError as exc:
                    current = {"error": str(exc), "server_ms": int(time.time() * 1000)}
                # A quiet fleet costs a tick a second (the page's proof of life and
                # clock), not the whole state.
                same = json.dumps({k: v for k, v in current.items() if k != "server_ms"})
                if same != last:
                    last = same
                    yield f"data: {json.dumps(current)}\n\n"
                else:
                    tick = json.dumps({"server_ms": current["server_ms"]})
                    yield f"event: tick\ndata: {tick}\n\n"
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), PERIOD)
        finally:
            self.feed.unlisten(wake)

    # -- control -------------------------------------------------------------------

    def refusal(self, request: Request) -> JSONResponse | None:
        if not self.control:
            return _error(403, "control is off (start with --allow-control and a token)")
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        given = value.strip().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, self.secret):
            response = _error(401, "a valid 'Authorization: Bearer <token>' header is required")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return None

    async def operate(self, request: Request, act: Action) -> Response:
        """Check the token, read the JSON body, run ``act`` in a thread and answer with
        the breaker it names as it is now."""
        refused = self.refusal(request)
        if refused is not None:
            return refused
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body must be JSON")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")

        def run() -> dict[str, Any]:
            name, scope, key = act(body)
            return self.fleet.breaker(name, scope, key).as_dict()

        try:
            return JSONResponse(await run_in_threadpool(run))
        except UnknownBreakerError as exc:
            return _error(404, str(exc))
        except ConfigurationError as exc:
            return _error(400, str(exc))
        except StorageError as exc:
            return _error(503, str(exc))

    async def breaker_action(self, request: Request) -> Response:
        action = request.path_params["action"]
        if action not in ("reset", "force-open", "open", "disable"):
            return _error(404, f"no action {action!r} (reset, force-open, open, disable)")

        def act(body: dict[str, Any]) -> tuple[str, str, str]:
            name = _text(body, "name", "")
            if not name:
                raise ConfigurationError("name is required")
            scope, key = _where(body)
            reason = _text(body, "reason", "") or None
            seconds = _seconds(body, required=action == "open")
            handle = self.fleet.handle(name, scope, key)
            if action == "reset":
                handle.reset(reason=reason)
            elif action == "force-open":
                handle.force_open(reason=reason)
            elif action == "disable":
                handle.disable(reason=reason)
            else:
                assert seconds is not None  # required above
                handle.open(seconds, reason=reason)
            return name, scope, key

        return await self.operate(request, act)

    async def pause(self, request: Request) -> Response:
        def act(body: dict[str, Any]) -> tuple[str, str, str]:
            scope, key, reason = _pause_target(body)
            seconds = _seconds(body, required=False)
            breaker = _pause_breaker(self.fleet, scope, key)
            if seconds is None:
                breaker.force_open(reason=reason)
            else:
                breaker.open(seconds, reason=reason)
            return PAUSE, scope, key

        return await self.operate(request, act)

    async def resume(self, request: Request) -> Response:
        def act(body: dict[str, Any]) -> tuple[str, str, str]:
            scope, key, reason = _pause_target(body)
            self.fleet.handle(PAUSE, scope, key).reset(reason=reason)  # no pause: 404
            return PAUSE, scope, key

        return await self.operate(request, act)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, exc.detail)


async def _crash(request: Request, exc: Exception) -> Response:
    logger.exception("dashboard request %s %s failed", request.method, request.url.path)
    return _error(500, f"internal error: {type(exc).__name__}")


def create_app(
    fleet: Fleet,
    *,
    allow_control: bool = False,
    token: str | None = None,
    metrics_app: Any = None,
) -> Starlette:
    """The dashboard of ``fleet``: read-only unless ``allow_control`` and a ``token``.

    Pub/sub events are followed from the app's lifespan: a server that runs no
    lifespan still serves everything, with updates once a second and no event list.
    """
    if allow_control and not token:
        logger.warning("dashboard control needs a token: serving read-only")
    board = Dashboard(fleet, control=bool(allow_control and token), token=token)
    routes: list[Route | Mount] = [
        Route("/", board.page),
        Route("/static/{name}", board.asset),
        Route("/api/state", board.api_state),
        Route("/events", board.events),
        Route("/api/breakers/{action}", board.breaker_action, methods=["POST"]),
        Route("/api/pause", board.pause, methods=["POST"]),
        Route("/api/resume", board.resume, methods=["POST"]),
    ]
    if metrics_app is not None:
        routes += [Route("/metrics", _Forward(metrics_app)), Mount("/metrics", metrics_app)]
    app = Starlette(
        routes=routes,
        lifespan=board.lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _crash},
    )
    app.state.feed = board.feed
    return app
