"""``redisbreaker bench``: what a breaker costs on your Redis."""

from __future__ import annotations

import click

from redisbreaker.cli import cli


@cli.command("bench")
@click.option("--url", "bench_url", default=None, help="Redis URL (default: a private server)")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@click.option("--tiny", is_flag=True, help="a few seconds' run (for smoke tests)")
@click.option("--calls", type=int, default=None, metavar="N",
              help="calls per round for the in-memory cases")  # fmt: skip
@click.pass_context
def bench(
    ctx: click.Context, bench_url: str | None, as_json: bool, tiny: bool, calls: int | None
) -> None:
    """Measure what a breaker costs per call (success and failure), per gate check, and
    in Redis round trips, beside a bare call, one GET and pybreaker (if installed), all
    interleaved in one run. Uses --url, else REDISBREAKER_URL, else a private
    redis-server started for the run."""
    from redisbreaker.bench import main_bench

    url = bench_url or ctx.find_root().params.get("url")
    ctx.exit(main_bench(url, as_json=as_json, tiny=tiny, calls=calls))
