"""A worker as its own Python process: ``python -m search.worker_process --storage URL [--study NAME]``.

``slimscout search --workers K`` and ``slimscout serve`` start their workers this way (not through
the CLI); ``slimscout worker`` runs the same ``run_worker``. SIGTERM and SIGINT finish the current
trial, then exit.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence


def command(url: str, study: str | None = None, index: int = 0) -> list[str]:
    """The command line that starts one worker on ``url`` (one study, or every open study of the service)."""
    argv = [sys.executable, "-m", "search.worker_process", "--storage", url, "--index", str(index)]
    return argv + (["--study", study] if study is not None else [])


def run_worker(url: str, *, study: str | None = None, index: int = 0, once: bool = False) -> None:
    """Measure trials of ``study`` until it is done, or serve every open study of the service."""
    from search.context import Workbench

    stop = threading.Event()

    def graceful(_signum: int, _frame: object) -> None:
        stop.set()  # finish the current trial, then exit

    signal.signal(signal.SIGTERM, graceful)
    signal.signal(signal.SIGINT, graceful)
    bench = Workbench()
    if study is not None:
        from search.worker import work_on_study

        work_on_study(url, study, bench, stop=stop, worker_index=index)
        return
    from search.service_worker import serve_studies

    serve_studies(url, bench, stop=stop, once=once)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m search.worker_process", description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True, help="database URL")
    parser.add_argument("--study", help="serve only this study (default: every open study of the service)")
    parser.add_argument("--index", type=int, default=0, help="worker index (varies the sampler seed)")
    parser.add_argument("--once", action="store_true", help="exit when no open study is left")
    args = parser.parse_args(argv)
    run_worker(args.storage, study=args.study, index=args.index, once=args.once)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
