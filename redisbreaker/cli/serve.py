"""``redisbreaker serve``: Prometheus metrics and the live dashboard (the ``serve`` extra)."""

from __future__ import annotations

import os

import click

from redisbreaker.cli import cli, target


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to bind")
@click.option("--port", type=int, default=8750, show_default=True)
@click.option("--allow-control", is_flag=True,
              help="serve the reset/force-open/pause buttons (needs --token)")  # fmt: skip
@click.option("--token", envvar="REDISBREAKER_TOKEN", default=None,
              help="bearer token the control API requires (or REDISBREAKER_TOKEN)")  # fmt: skip
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, allow_control: bool, token: str | None) -> None:
    """Serve /metrics (Prometheus text format, the whole fleet from Redis) and / (a live
    dashboard). Read-only unless --allow-control with a token."""
    try:
        from prometheus_client import CollectorRegistry, make_asgi_app

        from redisbreaker.metrics import FleetCollector
        from redisbreaker.serve import run
    except ImportError as exc:
        raise click.UsageError(
            f"redisbreaker serve needs the serve extra: pip install 'redisbreaker[serve]' ({exc})"
        ) from None
    if allow_control and not token:
        raise click.UsageError("--allow-control needs --token (or REDISBREAKER_TOKEN)")
    t = target(ctx)
    registry = CollectorRegistry()
    registry.register(FleetCollector(t.client, t.prefix))
    click.echo(f"redisbreaker serve: http://{host}:{port}/ (metrics at /metrics)", err=True)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    run(t.fleet, host=host, port=port, allow_control=allow_control, token=token,
        metrics_app=make_asgi_app(registry))  # fmt: skip
