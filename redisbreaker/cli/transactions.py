"""``redisbreaker tx ls | show ID | abort ID --reason R``."""

from __future__ import annotations

import json

import click

from redisbreaker.cli import cli, target
from redisbreaker.cli.output import table, when


@cli.group("tx")
def tx() -> None:
    """Transactions: list, show, abort."""


@tx.command("ls")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def tx_ls(ctx: click.Context, as_json: bool) -> None:
    """Every transaction under the prefix (pending, and decided ones still kept)."""
    found = target(ctx).fleet.transactions()
    if as_json:
        click.echo(json.dumps([t.as_dict() for t in found], indent=2))
        return
    rows = [
        [t.tx_id, t.outcome, f"{t.yes}/{t.no}/{t.participants - t.yes - t.no}",
         f"{t.acked}/{t.participants}", when(t.deadline_ms), t.reason or "-"]
        for t in found
    ]  # fmt: skip
    click.echo(table(["ID", "OUTCOME", "YES/NO/WAIT", "ACKED", "DEADLINE", "REASON"], rows))


@tx.command("show")
@click.argument("tx_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def tx_show(ctx: click.Context, tx_id: str, as_json: bool) -> None:
    """One transaction's decision and tally (decides ROLLBACK if past its deadline)."""
    d = target(ctx).fleet.status(tx_id)
    if as_json:
        t = d.tally
        click.echo(json.dumps({
            "tx_id": d.tx_id, "outcome": d.outcome.value, "reason": d.reason,
            "reason_kind": d.reason_kind, "participant": d.participant,
            "participants": t.participants, "yes": t.yes, "no": t.no, "acked": t.acked,
            "deadline_ms": t.deadline_ms,
        }, indent=2))  # fmt: skip
        return
    click.echo(d.describe())


@tx.command("abort")
@click.argument("tx_id")
@click.option("--reason", required=True, help="recorded as the ROLLBACK's reason")
@click.pass_context
def tx_abort(ctx: click.Context, tx_id: str, reason: str) -> None:
    """Decide ROLLBACK now (unless already decided)."""
    click.echo(target(ctx).fleet.transaction(tx_id).abort(reason).describe())
