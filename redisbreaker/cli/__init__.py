"""The ``redisbreaker`` command: see and steer the fleet from a shell.

``redisbreaker [--url URL | -A module:app] [--prefix P] COMMAND``. The Redis comes
from ``-A`` (a Celery app: its settings, as the workers see them), else ``--url``,
else ``REDISBREAKER_URL``. A bad URL, an unreachable Redis or an unknown breaker is
one line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import click

from redisbreaker import config
from redisbreaker.errors import RedisBreakerError
from redisbreaker.fleet import Fleet
from redisbreaker.keys import DEFAULT_PREFIX, validate_prefix


@dataclass
class Target:
    """Where the command acts: a Redis client and a key prefix (and the Celery app)."""

    client: Any
    prefix: str
    app: Any = None

    @property
    def fleet(self) -> Fleet:
        return Fleet(self.client, self.prefix)


def _find_app(spec: str) -> Any:
    try:
        from celery.app.utils import find_app
    except ImportError:
        raise click.UsageError("-A needs Celery: pip install 'redisbreaker[celery]'") from None
    sys.path.insert(0, os.getcwd())  # as `celery -A` does: the current directory first
    try:
        return find_app(spec)
    except Exception as exc:  # whatever importing the user's module raises
        raise click.UsageError(f"cannot load the Celery app {spec!r}: {exc}") from None


def target(ctx: click.Context) -> Target:
    """The Redis this invocation acts on, resolved once (lazily: --help needs none)."""
    found: Target | None = ctx.meta.get("redisbreaker.target")
    if found is not None:
        return found
    opts = ctx.find_root().params
    if opts.get("app"):
        from redisbreaker.celery.settings import settings_for

        app = _find_app(opts["app"])
        conf = settings_for(app)
        found = Target(conf.client(), opts["prefix"] or conf.prefix, app)
    else:
        url = opts.get("url") or os.environ.get(config.ENV_URL)
        if not url:
            raise click.UsageError(f"no Redis: give --url, set {config.ENV_URL}, or -A module:app")
        prefix = opts["prefix"] or os.environ.get(config.ENV_PREFIX) or DEFAULT_PREFIX
        found = Target(config.client_from_url(url), validate_prefix(prefix))
    ctx.meta["redisbreaker.target"] = found
    return found


class Group(click.Group):
    """Turns the library's errors into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RedisBreakerError as exc:
            click.echo(f"redisbreaker: {exc}", err=True)
            ctx.exit(1)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar=config.ENV_URL, help="Redis URL (else REDISBREAKER_URL)")
@click.option("-A", "--app", metavar="MODULE:APP", help="take the settings from a Celery app")
@click.option("--prefix", default=None, help="key prefix (default: the app's, or rb:)")
@click.version_option(package_name="redisbreaker", prog_name="redisbreaker")
def cli(url: str | None, app: str | None, prefix: str | None) -> None:
    """See and steer the breakers, pauses and transactions of a Celery fleet."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``redisbreaker`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        click.echo(cli.get_help(click.Context(cli, info_name="redisbreaker")))
        return 2
    # The command prints what it did; the library's own log lines would repeat it.
    logging.getLogger("redisbreaker").setLevel(logging.ERROR)
    try:
        status = cli.main(args=args, prog_name="redisbreaker", standalone_mode=False)
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except click.Abort:
        return 1
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return status if isinstance(status, int) else 0


from redisbreaker.cli import bench, breakers, dlq, serve, transactions  # noqa: E402  (registers)

__all__ = ["bench", "breakers", "cli", "dlq", "main", "serve", "target", "transactions"]
