"""``slimscout worker``: a long-lived process that measures trials from the shared storage."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("worker", help="measure trials from a shared study storage")
    parser.add_argument("--storage", help="database URL (default: settings.storage_url)")
    parser.add_argument("--study", help="serve only this study (default: every open study of the service)")
    parser.add_argument("--index", type=int, default=0, help="worker index (varies the sampler seed)")
    parser.add_argument("--once", action="store_true", help="exit when no open study is left")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from common.settings import get_settings
    from search.worker_process import run_worker

    run_worker(args.storage or get_settings().storage_url, study=args.study, index=args.index, once=args.once)
    return 0
