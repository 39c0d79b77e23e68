"""``redisbreaker dlq``: dead-lettered tasks (``ls``, ``show``, ``replay``, ``purge``,
``stats``). Replay publishes through the Celery app's broker: it needs ``-A``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from redisbreaker.cli import cli, target
from redisbreaker.cli.output import table, when
from redisbreaker.errors import ConfigurationError

if TYPE_CHECKING:  # (importing it needs Celery; _store says so when it is missing)
    from redisbreaker.celery.deadletter import DeadLetters


def _store(ctx: click.Context) -> DeadLetters:
    try:
        from redisbreaker.celery.deadletter import DeadLetters
    except ImportError as exc:
        raise click.UsageError(
            f"dlq needs Celery: pip install 'redisbreaker[celery]' ({exc})"
        ) from None
    t = target(ctx)
    if t.app is not None:
        return DeadLetters(t.app)
    return DeadLetters(client=t.client, prefix=t.prefix)


@cli.group("dlq")
def dlq() -> None:
    """Tasks that failed for good: list, show, replay, purge, stats."""


@dlq.command("ls")
@click.option("--queue", default=None)
@click.option("--task", default=None, help="only this task name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def dlq_ls(ctx: click.Context, queue: str | None, task: str | None, as_json: bool) -> None:
    """Every dead-lettered task, oldest first."""
    entries = _store(ctx).entries(queue, task)
    if as_json:
        click.echo(json.dumps([e.as_dict() for e in entries], indent=2, default=str))
        return
    rows = [
        [e.entry_id, e.task, e.task_id, when(e.time_ms), str(len(e.attempts)),
         f"{e.exc_type}: {e.exc_message}"[:80] + (" (replaying)" if e.replaying else "")]
        for e in entries
    ]  # fmt: skip
    click.echo(table(["ID", "TASK", "TASK ID", "TIME", "ATTEMPTS", "FAILURE"], rows))


@dlq.command("show")
@click.argument("entry_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def dlq_show(ctx: click.Context, entry_id: str, as_json: bool) -> None:
    """One entry: the task, its arguments, the failure, the traceback and every attempt."""
    e = _store(ctx).get(entry_id)
    if as_json:
        out = e.as_dict(full=True)
        click.echo(json.dumps(out, indent=2, default=str))
        return
    args, kwargs = e.arguments()
    click.echo(f"{e.entry_id}: {e.task}[{e.task_id}] {e.reason} at {when(e.time_ms)} on {e.worker}")
    click.echo(f"  sent to:  exchange {e.exchange!r}, routing key {e.routing_key!r}")
    click.echo(f"  args:     {args!r}\n  kwargs:   {kwargs!r}")
    click.echo(f"  failure:  {e.exc_type}: {e.exc_message}")
    for a in e.attempts:
        countdown = f", retry in {a.countdown_s:g}s" if a.countdown_s is not None else ""
        failure = f" {a.exc_type}: {a.exc_message}" if a.exc_type else ""
        click.echo(f"  attempt:  {when(a.ended_ms)} {a.worker} {a.outcome} after "
                   f"{a.runtime_s:.3f}s{failure}{countdown}")  # fmt: skip
    click.echo(e.traceback.rstrip())


def _select(ctx: click.Context, ids: tuple[str, ...], every: bool, queue: str | None,
            task: str | None) -> list[str]:  # fmt: skip
    if ids and every:
        raise click.UsageError("give entry ids or --all, not both")
    if not ids and not every:
        raise click.UsageError("give entry ids, or --all (with --queue/--task to narrow it)")
    if ids:
        return list(ids)
    return [e.entry_id for e in _store(ctx).entries(queue, task)]


@dlq.command("replay")
@click.argument("ids", nargs=-1)
@click.option("--all", "every", is_flag=True, help="every entry (of --queue, of --task)")
@click.option("--queue", default=None)
@click.option("--task", default=None)
@click.option("--new-id", is_flag=True, help="send under a new task id")
@click.pass_context
def dlq_replay(
    ctx: click.Context, ids: tuple[str, ...], every: bool, queue: str | None,
    task: str | None, new_id: bool,
) -> None:  # fmt: skip
    """Send entries again to their original exchange and routing key, then remove them."""
    if target(ctx).app is None:
        raise ConfigurationError(
            "dlq replay publishes through the app's broker: give -A module:app"
        )
    chosen = _select(ctx, ids, every, queue, task)
    sent = _store(ctx).replay(chosen, new_id=new_id)
    click.echo(f"replayed {len(sent)} of {len(chosen)}")
    for task_id in sent:
        click.echo(f"  {task_id}")


@dlq.command("purge")
@click.argument("ids", nargs=-1)
@click.option("--all", "every", is_flag=True)
@click.option("--queue", default=None)
@click.option("--task", default=None)
@click.option("--yes", is_flag=True, help="needed: a purge cannot be undone")
@click.pass_context
def dlq_purge(
    ctx: click.Context, ids: tuple[str, ...], every: bool, queue: str | None,
    task: str | None, yes: bool,
) -> None:  # fmt: skip
    """Remove entries without replaying them."""
    if not yes:
        raise click.UsageError("a purge cannot be undone: add --yes")
    removed = _store(ctx).purge(_select(ctx, ids, every, queue, task))
    click.echo(f"purged {removed}")


@dlq.command("stats")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def dlq_stats(ctx: click.Context, as_json: bool) -> None:
    """Per queue: entries now, and added, dropped by the cap, replayed, purged."""
    stats = _store(ctx).stats()
    if as_json:
        click.echo(json.dumps(stats, indent=2))
        return
    kinds = ["entries", "added", "dropped", "replayed", "purged"]
    rows = [[q, *(str(s[k]) for k in kinds)] for q, s in sorted(stats.items())]
    click.echo(table(["QUEUE", *(k.upper() for k in kinds)], rows))
