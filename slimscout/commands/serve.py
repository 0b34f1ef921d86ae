"""``slimscout serve``: the API and dashboard, with K worker processes on the same database.

Optuna's own dashboard opens on the same storage too: ``optuna-dashboard sqlite:///slimscout.db``
(our routes live under ``/v1`` and ``/studies``, clear of its paths, if both share a proxy).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
from types import FrameType

log = logging.getLogger(__name__)

STOP_GRACE_S = 30.0


class _Shutdown(Exception):  # a signal to stop, not an error
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("serve", help="run the API and dashboard (and local workers)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--storage", help="database URL (default: settings.storage_url)")
    parser.add_argument("--workers", type=int, default=1, metavar="K",
                        help="worker processes to start next to the server (default 1; 0 for none)")
    parser.set_defaults(handler=run)


def worker_command(url: str) -> list[str]:
    """A worker serving every open study (a Python process of its own, not the CLI)."""
    from search.worker_process import command

    return command(url)


def start_workers(url: str, count: int) -> list[subprocess.Popen[bytes]]:
    """Start ``count`` workers in their own process groups: a Ctrl-C reaches the server, which stops them."""
    env = dict(os.environ, SLIMSCOUT_STORAGE_URL=url)
    workers = [subprocess.Popen(worker_command(url), env=env, start_new_session=True) for _ in range(count)]
    for worker in workers:
        log.info("started worker pid %d", worker.pid)
    return workers


def stop_workers(workers: list[subprocess.Popen[bytes]], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM every worker (they finish their current trial), wait up to ``grace_s``, then SIGKILL."""
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
    for worker in workers:
        try:
            worker.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            log.warning("worker pid %d did not stop in %.0f s; killing it", worker.pid, grace_s)
            worker.kill()
            worker.wait()


def _raise_shutdown(signum: int, _frame: FrameType | None) -> None:
    raise _Shutdown(signum)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from api.main import create_app
    from api.server import config as server_config
    from common.errors import SlimscoutError
    from common.settings import get_settings
    from storage import init_db

    if args.workers < 0:
        raise SlimscoutError(f"--workers must be 0 or more, got {args.workers}")
    settings = get_settings()
    url = args.storage or settings.storage_url
    settings = settings.model_copy(update={"storage_url": url})
    init_db(url)  # once, before the workers race to do it
    # Ours until uvicorn takes them over; it hands a signal it caught back to these when it exits.
    previous = {sig: signal.signal(sig, _raise_shutdown) for sig in (signal.SIGINT, signal.SIGTERM)}
    workers: list[subprocess.Popen[bytes]] = []
    try:
        workers = start_workers(url, args.workers)
        server = uvicorn.Server(server_config(create_app(settings), settings, host=args.host, port=args.port,
                                              log_level="info", timeout_graceful_shutdown=5))
        server.run()
    except _Shutdown as stop:
        log.info("received %s; shutting down", stop)
    finally:
        stop_workers(workers)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
