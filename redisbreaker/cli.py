"""The ``redisbreaker`` command line: ``redisbreaker bench``."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

Handler = Callable[[argparse.Namespace], int]


def _bench(args: argparse.Namespace) -> int:
    from redisbreaker.bench import main_bench

    return main_bench(args.url, as_json=args.json, tiny=args.tiny, calls=args.calls)


def _add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench",
        help="measure the breaker's call and gate overhead against a Redis",
        description=(
            "Measure what a breaker costs per call (success and failure), per gate check, "
            "and in Redis round trips, beside a bare call, one GET and pybreaker (if "
            "installed), all interleaved in one run. Uses --url, else REDISBREAKER_URL, "
            "else a private redis-server started for the run."
        ),
    )
    p.add_argument("--url", default=None, help="Redis URL (default: an embedded server)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--tiny", action="store_true", help="a few seconds' run (for smoke tests)")
    p.add_argument("--calls", type=int, default=None, metavar="N",
                   help="calls per round for the in-memory cases")  # fmt: skip
    p.set_defaults(handler=_bench)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    _add_bench,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="redisbreaker", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``redisbreaker`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
