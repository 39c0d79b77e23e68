"""What the sync and asyncio breakers share: construction, binding, listeners, pickling."""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Unpack

import redis

from redisbreaker import config, forking, scripts
from redisbreaker.breaker_core import BreakerCore, ScriptCall, decode_event
from redisbreaker.errors import STORAGE_ERRORS, ConfigurationError, StorageError
from redisbreaker.events import is_cluster
from redisbreaker.keys import KeySpace, validate_name
from redisbreaker.options import BreakerSettings, options_from
from redisbreaker.outage import diagnose
from redisbreaker.state import State, Transition

logger = logging.getLogger("redisbreaker")

StateListener = Callable[[State, State], None]
TransitionListener = Callable[[Transition], None]

SCRIPTS = (
    "breaker_admit", "breaker_report", "breaker_flush", "breaker_operate", "breaker_snapshot",
    "gate_claim",
)  # fmt: skip

# Redis versions below this lack commands the scripts use (and are not tested).
MIN_REDIS = (6, 2)


KIND = "cb"


class BreakerBase:
    """Name, settings, keys, cached view and listeners of one breaker in one process."""

    def __init__(
        self,
        name: str | bytes,
        *,
        client: Any = None,
        prefix: str | None = None,
        on_state_change: StateListener | None = None,
        **settings: Unpack[BreakerSettings],
    ) -> None:
        validate_name("breaker", name)
        if on_state_change is not None and not callable(on_state_change):
            raise ConfigurationError(f"on_state_change must be callable, got {on_state_change!r}")
        self.options = options_from(settings)
        self._settings = dict(settings)
        self._raw_name = name
        self.name = name if isinstance(name, str) else name.decode("utf-8", "backslashreplace")
        keys = KeySpace.of(prefix if prefix is not None else config.default_prefix(), KIND, name)
        self._core = BreakerCore(self.name, self.options, keys)
        self._client = client
        self._on_state_change = on_state_change
        self._subscribers: list[TransitionListener] = []
        self._bind_lock = threading.Lock()
        self._scripts: dict[str, Any] | None = None
        self._epoch = -1  # the fork epoch the binding was made in
        self._server_fine = False  # its client's server was checked and is supported
        self._tickets = self._new_ticket_store()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.options.on_outage.value}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # Celery, multiprocessing's spawn and caches pickle objects that hold a breaker.
        # It travels as its name, key prefix and options; the copy binds lazily, in its
        # own process, to that process's default client (a client holds sockets and
        # locks and cannot travel). Subscribers are this process's and stay here.
        return (
            _unpickle,
            (type(self), self._raw_name, self._core.keys.prefix, self._settings,
             self._on_state_change),
        )  # fmt: skip

    @property
    def core(self) -> BreakerCore:
        """The breaker's decision engine in this process (no I/O): its cached view, its
        outbox and its script calls. For tools and benchmarks; calls go through the
        breaker's own methods."""
        return self._core

    @property
    def client(self) -> Any:
        """The Redis client this breaker uses (``None`` until it is first needed, when
        no ``client=`` was given)."""
        return self._client

    def connect(self) -> None:
        """Bind now instead of at the first call: resolve the client, register the
        scripts and join this process's pub/sub hub (no round trip)."""
        self._bind()

    def set_clock(self, local: Callable[[], float], server_ms: Callable[[], int] | None) -> None:
        """Read time from ``local`` (seconds, monotonic) and ``server_ms`` (what the
        scripts use instead of Redis ``TIME``; ``None``: the server's clock). For tests:
        see :class:`redisbreaker.testing.VirtualClock`."""
        self._core.now = local
        self._core.clock_override = server_ms
        self._core.background = False  # its syncer would run on real time

    @property
    def keys(self) -> list[str]:
        """The Redis keys of this breaker (they share one hash tag)."""
        return list(self._core.key_list)

    def subscribe(self, callback: TransitionListener) -> None:
        """Call ``callback(transition)`` for each transition of this breaker that this
        process sees on pub/sub, wherever it was made (including here)."""
        if not callable(callback):
            raise ConfigurationError(f"subscribe() needs a callable, got {callback!r}")
        self._subscribers.append(callback)

    # -- binding: once per process, on first use ------------------------------------------

    def _bind(self) -> dict[str, Any]:
        """The scripts on this breaker's client; the first use in a process (including a
        forked child) also joins that process's pub/sub hub."""
        bound = self._scripts
        if bound is not None and self._epoch == forking.epoch:
            return bound
        if self._epoch != forking.epoch and bound is not None:
            # In a forked child: the parent's locks may be held by threads that did not
            # come along, and the parent's hub thread is gone.
            self._bind_lock = threading.Lock()
            self._core.reinit_after_fork()
        with self._bind_lock:
            if self._scripts is None or self._epoch != forking.epoch:
                client = self._client
                if client is None:
                    try:
                        client = self._default_client()
                    except STORAGE_ERRORS as exc:  # a Cluster client reaches a node to be
                        raise StorageError(  # made: none up is an outage, not a crash
                            f"breaker {self.name!r}: {diagnose(exc)}"
                        ) from exc
                else:
                    config.refuse_decoding_client(client, f"breaker {self.name!r}")
                    config.warn_risky_client(client)
                found = {name: scripts.for_client(client, name) for name in SCRIPTS}
                self._client = client
                self._server_fine = False
                # The prefix's channel, or on Redis Cluster the hash slot's (keys.py).
                self._core.channel = self._core.keys.channel(sharded=is_cluster(client))
                self._join_hub(client)
                self._epoch = forking.epoch
                self._scripts = found
            return self._scripts

    def _new_ticket_store(self) -> Any:
        raise NotImplementedError

    def _default_client(self) -> Any:
        raise NotImplementedError

    def _join_hub(self, client: Any) -> None:
        raise NotImplementedError

    def _server_checked(self, info: Mapping[str, Any] | None) -> None:
        """Remember what ``INFO server`` said of this client's server (``None``: it could
        not be read, e.g. an ACL without INFO: the scripts will tell)."""
        _checked_clients[self._client] = None if info is None else server_problem(info)

    def _server_refusal(self) -> StorageError | None:
        """``None`` if the server is fine; an error to raise if it is unsupported."""
        if self._server_fine:
            return None
        problem = _checked_clients.get(self._client, "")
        if problem is None:
            # Remembered here: two weak-dictionary lookups cost every script call 0.3 µs.
            self._server_fine = True
            return None
        return StorageError(f"breaker {self.name!r}: {problem}") if problem else None

    def _unchecked(self) -> bool:
        return not self._server_fine and self._client not in _checked_clients

    # -- the pub/sub hub calls these (see redisbreaker/events.py) ---------------------------

    def on_message(self, message: Transition) -> None:
        self._core.on_event(message, self._core.now())
        for callback in self._subscribers:
            _guarded(callback, message)

    def on_reset(self) -> None:
        self._core.invalidate()

    def _notify(self, transition: Transition | None) -> None:
        if transition is not None and self._on_state_change is not None:
            _guarded(self._on_state_change, transition.old, transition.new)

    def flush_caller(self) -> Any:
        """The ``breaker_flush`` script on this breaker's client, for the background
        syncer (redisbreaker/syncer.py), which sends it for many breakers at once."""
        return self._bind()["breaker_flush"]

    def _settle(self, call: ScriptCall, reply: Any) -> ScriptCall | None:
        """Take the reply to ``call`` that the syncer sent for this breaker: a breaker
        reply, or the error it met. What the sender role must send next (the shell's
        ``settle_background`` sends it), if it held the role."""
        core = self._core
        if isinstance(reply, BaseException):
            error = (
                reply
                if isinstance(reply, StorageError)
                else self._storage_error(reply, call.script)
            )
            core.call_failed(call, error)
            return None
        _view, transition = core.apply(reply, core.now())
        self._notify(transition)
        return core.sent() if call.sender else None

    def _storage_error(self, exc: BaseException, script: str) -> StorageError:
        if isinstance(exc, redis.ResponseError):
            return self._core.wrap_response_error(exc, script)
        return StorageError(f"breaker {self.name!r}: {diagnose(exc)}")


# Clients whose server version was checked, and what was wrong with it (None: fine).
_checked_clients: weakref.WeakKeyDictionary[Any, str | None] = weakref.WeakKeyDictionary()


def server_problem(info: Mapping[str, Any]) -> str | None:
    """Why a server (``INFO server``; a cluster client's reply per node) is unsupported."""
    versions = [
        str(v.get("redis_version", "")) for v in info.values() if isinstance(v, Mapping)
    ] or [str(info.get("redis_version", ""))]
    for version in versions:
        try:
            numbers = tuple(int(x) for x in version.split(".")[:2])
        except ValueError:
            continue  # not Redis (a compatible server): let the scripts tell
        if numbers < MIN_REDIS:
            needed = ".".join(map(str, MIN_REDIS))
            return f"Redis {version} is not supported; redisbreaker needs Redis {needed} or later"
    return None


def _unpickle(
    cls: type[BreakerBase], name: str | bytes, prefix: str, settings: dict[str, Any],
    on_state_change: StateListener | None,
) -> BreakerBase:  # fmt: skip
    return cls(name, prefix=prefix, on_state_change=on_state_change, **settings)


def _guarded(fn: Callable[..., object], *args: object) -> None:
    try:
        fn(*args)
    except Exception:
        logger.exception("redisbreaker listener %r raised", fn)


def decode(payload: bytes) -> tuple[str, Transition] | None:
    return decode_event(payload)
