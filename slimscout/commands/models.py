"""``slimscout models``: list the model catalog."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from slimscout.commands._common import print_json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("models", help="list the models slimscout knows by name")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from compress.catalog import CATALOG

    if args.json:
        print_json({"models": [asdict(entry) for entry in CATALOG.values()]})
        return 0
    for entry in CATALOG.values():
        print(f"{entry.model_id:14} {entry.kind:10} {entry.description}")
    print("\nAlso: a local directory in Hugging Face format (safetensors), or a hub id where a hub is reachable.")
    return 0
