"""The ``slimscout`` command line. Each subcommand lives in slimscout/commands/<name>.py.

Errors a user can cause (SlimscoutError) print as one line on stderr and exit 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from common import __version__
from common.errors import SlimscoutError

COMMANDS = ("models", "evaluate", "baseline", "search", "worker", "serve", "apply", "speed", "leveldb", "recover")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimscout", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"slimscout {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"slimscout.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.handler(args) or 0)
    except SlimscoutError as exc:
        print(f"slimscout {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"slimscout {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
