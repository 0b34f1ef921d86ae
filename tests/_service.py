"""Processes for the end-to-end tests: ``slimscout serve`` (and its workers) started, watched, killed.

A hard kill takes the server and the workers it started: they run in their own sessions, so a
SIGKILL to the server alone would leave them measuring (what a crashed machine does not).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of each child process of ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append((int(entry.name), cmdline))
    return found


def wait_healthy(port: int, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 60.0) -> float:
    """Seconds until ``/healthz`` answered 200; fails with the server's log if it died or never did."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"the server did not become healthy:\n{log.read_text()}")


class Serve:
    """One ``slimscout serve`` process on a fixed port; ``start()`` again after ``kill()`` restarts it."""

    def __init__(self, storage_url: str, log_dir: Path, *, workers: int = 1, port: int | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.storage_url = storage_url
        self.log_dir = log_dir
        self.workers = workers
        self.port = port or free_port()
        self.env = dict(os.environ, HF_HUB_OFFLINE="1", **(env or {}))
        self.env.pop("SLIMSCOUT_API_TOKEN", None)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.log_dir / f"serve-{self.port}-{self.starts}.log"

    def start(self) -> Serve:
        self.starts += 1
        with self.log.open("wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "slimscout.cli", "serve", "--port", str(self.port), "--storage",
                 self.storage_url, "--workers", str(self.workers)],
                cwd=REPO, env=self.env, stdout=output, stderr=subprocess.STDOUT)
        wait_healthy(self.port, self.process, self.log)
        return self

    def worker_pids(self) -> list[int]:
        assert self.process is not None
        return [pid for pid, cmd in children(self.process.pid) if "search.worker_process" in cmd]

    def kill(self) -> None:
        """SIGKILL the server and its workers, as a power cut would."""
        assert self.process is not None
        workers = self.worker_pids()
        for pid in [*workers, self.process.pid]:
            os.kill(pid, signal.SIGKILL)
        self.process.wait()
        deadline = time.monotonic() + 10
        while not all(_gone(pid) for pid in workers):
            assert time.monotonic() < deadline, "a killed worker is still alive"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()

    def logs(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in sorted(self.log_dir.glob("serve-*.log")))


def _gone(pid: int) -> bool:
    """Exited (a zombie counts: it holds no connections any more)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
