"""Breakers, pauses, workers and the live event stream: ``ls``, ``show``, ``open``,
``force-open``, ``disable``, ``reset``, ``pause``, ``resume``, ``workers``, ``watch``."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from redisbreaker.breaker import SharedBreaker
from redisbreaker.breaker_core import decode_event
from redisbreaker.cli import cli, target
from redisbreaker.cli.output import table, when
from redisbreaker.errors import ConfigurationError
from redisbreaker.events import PrefixFeed
from redisbreaker.fleet import PAUSE, BreakerInfo, Fleet, UnknownBreakerError, join_name
from redisbreaker.options import open_seconds
from redisbreaker.tx_waiters import decode

SCOPES = ("cluster", "worker", "host", "queue")
# How long `watch` waits for its subscriptions (on a Cluster: 32,768 of them).
SUBSCRIBE_WAIT = 30.0
F = TypeVar("F", bound=Callable[..., Any])


def _scope(value: str) -> tuple[str, str]:
    """``cluster`` or ``worker=celery@gpu1`` (``host=...``, ``queue=...``)."""
    scope, _, key = value.partition("=")
    if scope not in SCOPES or (scope != "cluster") != bool(key):
        raise click.BadParameter(
            f"{value!r}: expected cluster, worker=NODE, host=HOST or queue=QUEUE"
        )
    return scope, key


def _row(b: BreakerInfo) -> list[str]:
    return [
        b.name,
        "cluster" if b.scope == "cluster" else f"{b.scope}={b.scope_key}",
        b.state.value,
        f"{b.retry_after:.1f}s" if b.retry_after else "-",
        f"{b.failure_rate:.0%}" if b.calls else "-",
        str(b.totals.successful + b.totals.failed),
        str(b.totals.trips),
        b.reason.text or "-",
    ]


def _show(info: BreakerInfo, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(info.as_dict(), indent=2, default=str))
        return
    t, r = info.totals, info.reason
    click.echo(
        f"{info.label}: {info.state.value}"
        + (f", retry after {info.retry_after:.1f}s" if info.retry_after else "")
        + f"\n  reason:    {r.text or '-'}"
        + (f"\n  failure:   {r.error}" if r.error else "")
        + (f"\n  by:        {r.by} at {when(r.at_ms)}" if r.by else "")
        + f"\n  window:    {info.calls} calls, {info.failures} failed, {info.slow_calls} slow,"
        f" {info.consecutive_failures} consecutive failures"
        + f"\n  totals:    {t.successful} successful, {t.failed} failed, {t.slow} slow,"
        f" {t.ignored} ignored, {t.not_permitted} not permitted"
        + f"\n  trips:     {t.trips} (open {t.open_ms / 1000:.1f}s in all)"
    )


@cli.command("ls")
@click.option("--json", "as_json", is_flag=True, help="a JSON list of objects")
@click.pass_context
def ls(ctx: click.Context, as_json: bool) -> None:
    """List every breaker (and manual pause) under the prefix."""
    fleet = target(ctx).fleet
    breakers = fleet.breakers()
    if as_json:
        click.echo(json.dumps([b.as_dict() for b in breakers], indent=2, default=str))
    else:
        header = ["NAME", "SCOPE", "STATE", "RETRY", "FAIL%", "CALLS", "TRIPS", "REASON"]
        click.echo(table(header, [_row(b) for b in breakers]))
    data = fleet.data_set()
    if data is not None and data.replaced_a_lost_one:
        click.echo(
            f"warning: Redis lost the data under this prefix; found at {when(data.lost_at_ms)} "
            f"by {data.created_by} (see docs/redis.md)", err=True,
        )  # fmt: skip


def _name_and_scope(f: Any) -> Any:
    f = click.option("--scope", "scope", default="cluster", metavar="SCOPE[=KEY]",
                     help="the breaker's scope: cluster (default), worker=NODE, host=HOST, "
                     "queue=QUEUE")(f)  # fmt: skip
    return click.argument("name")(f)


@cli.command("show")
@_name_and_scope
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def show(ctx: click.Context, name: str, scope: str, as_json: bool) -> None:
    """One breaker: state, why, who and when, and its fleet-wide totals."""
    _show(target(ctx).fleet.breaker(name, *_scope(scope)), as_json)


def _operate(ctx: click.Context, name: str, scope: str, command: str, **kw: Any) -> None:
    fleet = target(ctx).fleet
    s, key = _scope(scope)
    handle = fleet.handle(name, s, key)
    getattr(handle, command)(**kw)
    _show(fleet.breaker(name, s, key), as_json=False)


_reason = click.option("--reason", default=None, help="recorded with the state")


@cli.command("open")
@_name_and_scope
@click.option("--for", "seconds", type=float, required=True, help="seconds to stay open")
@_reason
@click.pass_context
def open_(ctx: click.Context, name: str, scope: str, seconds: float, reason: str | None) -> None:
    """Open a breaker for SECONDS; then the usual half-open trial runs."""
    _operate(ctx, name, scope, "open", seconds=seconds, reason=reason)


@cli.command("force-open")
@_name_and_scope
@_reason
@click.pass_context
def force_open(ctx: click.Context, name: str, scope: str, reason: str | None) -> None:
    """Open a breaker until reset (every call is refused, fleet-wide)."""
    _operate(ctx, name, scope, "force_open", reason=reason)


@cli.command("disable")
@_name_and_scope
@_reason
@click.pass_context
def disable(ctx: click.Context, name: str, scope: str, reason: str | None) -> None:
    """Let every call through and record nothing, until reset."""
    _operate(ctx, name, scope, "disable", reason=reason)


@cli.command("reset")
@_name_and_scope
@_reason
@click.pass_context
def reset(ctx: click.Context, name: str, scope: str, reason: str | None) -> None:
    """Close a breaker and clear its counts."""
    _operate(ctx, name, scope, "reset", reason=reason)


def _pause_breaker(fleet: Fleet, scope: str, key: str) -> SharedBreaker:
    """The breaker that stands for a manual pause (see redisbreaker.celery.pause)."""
    try:
        return fleet.handle(PAUSE, scope, key)
    except UnknownBreakerError:
        return SharedBreaker(join_name(PAUSE, scope, key), client=fleet.client,
                             prefix=fleet.prefix, fail_max=1, reset_timeout=1.0)  # fmt: skip


def _pause_scope(scope: str, worker: str | None, host: str | None, queue: str | None) -> str:
    given = {"worker": worker, "host": host, "queue": queue}
    if scope == "cluster":
        if any(given.values()):
            raise click.UsageError("--scope cluster takes no --worker/--host/--queue")
        return ""
    if not given[scope]:
        raise click.UsageError(f"--scope {scope} needs --{scope}")
    return str(given[scope])


_pause_where = [
    click.option("--scope", type=click.Choice(SCOPES), default="cluster", show_default=True),
    click.option("--worker", default=None, help="node name, for --scope worker"),
    click.option("--host", default=None, help="host name, for --scope host"),
    click.option("--queue", default=None, help="queue name, for --scope queue"),
]


def _with(options: list[Any]) -> Callable[[F], F]:
    def apply(f: F) -> F:
        for option in reversed(options):
            f = option(f)
        return f

    return apply


@cli.command("pause")
@_with(_pause_where)
@click.option("--for", "seconds", type=float, default=None, help="seconds (default: until resume)")
@_reason
@click.pass_context
def pause(
    ctx: click.Context, scope: str, worker: str | None, host: str | None, queue: str | None,
    seconds: float | None, reason: str | None,
) -> None:  # fmt: skip
    """Stop the workers of a scope from fetching tasks (a manual pause)."""
    key = _pause_scope(scope, worker, host, queue)
    fleet = target(ctx).fleet
    handle = _pause_breaker(fleet, scope, key)
    if seconds is None:
        handle.force_open(reason=reason)
    else:
        handle.open(open_seconds(seconds, "--for"), reason=reason)
    _show(fleet.breaker(PAUSE, scope, key), as_json=False)


@cli.command("resume")
@_with(_pause_where)
@_reason
@click.pass_context
def resume(
    ctx: click.Context, scope: str, worker: str | None, host: str | None, queue: str | None,
    reason: str | None,
) -> None:  # fmt: skip
    """End a manual pause of a scope."""
    key = _pause_scope(scope, worker, host, queue)
    fleet = target(ctx).fleet
    _pause_breaker(fleet, scope, key).reset(reason=reason)
    _show(fleet.breaker(PAUSE, scope, key), as_json=False)


@cli.command("workers")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def workers(ctx: click.Context, as_json: bool) -> None:
    """Every worker whose consumption gate is alive, with its paused queues."""
    found = target(ctx).fleet.workers()
    if as_json:
        click.echo(json.dumps([w.as_dict() for w in found], indent=2))
        return
    rows = []
    for w in found:
        paused = ", ".join(f"{q} (by {p.get('by', '?')})" for q, p in sorted(w.paused.items()))
        rows.append([w.worker, w.host, ",".join(w.queues), paused or "-"])
    click.echo(table(["WORKER", "HOST", "QUEUES", "PAUSED"], rows))


@cli.command("watch")
@click.option("--count", type=int, default=None, help="stop after this many events")
@click.option("--timeout", type=float, default=None, help="stop after this many seconds")
@click.pass_context
def watch(ctx: click.Context, count: int | None, timeout: float | None) -> None:
    """Print breaker transitions and transaction decisions as they happen."""
    t = target(ctx)
    events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
    feed = PrefixFeed(
        t.client, t.prefix, {"cb": decode_event, "tx": decode},
        lambda kind, message: events.put((kind, message)),
    )  # fmt: skip
    end = None if timeout is None else time.monotonic() + timeout
    seen = 0
    try:
        # "watching" is said once every subscription is confirmed (a positive signal).
        wait = SUBSCRIBE_WAIT if end is None else min(SUBSCRIBE_WAIT, end - time.monotonic())
        if not feed.connected.wait(max(0.0, wait)):
            raise ConfigurationError(
                f"cannot subscribe to the events of prefix {t.prefix!r}: Redis did not "
                f"confirm the subscriptions within {max(0.0, wait):g}s"
            )
        click.echo(f"watching {t.prefix}cb and {t.prefix}tx events (Ctrl-C to stop)", err=True)
        while (count is None or seen < count) and (end is None or time.monotonic() < end):
            try:
                kind, message = events.get(timeout=0.5)
            except queue.Empty:
                continue
            seen += 1
            click.echo(_event_line(kind, message))
    except KeyboardInterrupt:
        pass
    finally:
        feed.close()


def _event_line(kind: str, message: Any) -> str:
    stamp = datetime.now(UTC).strftime("%H:%M:%S")
    if kind == "cb":
        e = message
        retry = f", retry in {e.retry_after:.1f}s" if e.retry_after else ""
        return f"{stamp} breaker {e.name}: {e.old.value} -> {e.new.value}{retry} ({e.origin})"
    return f"{stamp} {message.describe()}"
