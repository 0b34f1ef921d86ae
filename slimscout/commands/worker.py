"""``slimscout worker``: a long-lived process that measures trials from the shared storage."""

from __future__ import annotations

import argparse
import signal
import threading


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("worker", help="measure trials from a shared study storage")
    parser.add_argument("--storage", help="database URL (default: settings.storage_url)")
    parser.add_argument("--study", help="serve only this study (default: every open study of the service)")
    parser.add_argument("--index", type=int, default=0, help="worker index (varies the sampler seed)")
    parser.add_argument("--once", action="store_true", help="exit when no open study is left")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from common.settings import get_settings
    from search.context import Workbench
    from search.worker import work_on_study

    url = args.storage or get_settings().storage_url
    stop = threading.Event()

    def graceful(_signum: int, _frame: object) -> None:
        stop.set()  # finish the current trial, then exit

    signal.signal(signal.SIGTERM, graceful)
    signal.signal(signal.SIGINT, graceful)
    bench = Workbench()
    if args.study:
        work_on_study(url, args.study, bench, stop=stop, worker_index=args.index)
        return 0
    from search.service_worker import serve_studies

    serve_studies(url, bench, stop=stop, once=args.once)
    return 0
