"""scripts/setup-test-env.sh on a fresh machine's shape: no Chromium, PostgreSQL installed but down.

The system commands are stubs on an otherwise empty PATH that log how they were called, so the
test checks what the script would do as root without installing or starting anything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "setup-test-env.sh"
TOOLS = ("seq", "sleep", "ls", "sort", "tail", "cat", "touch")


def stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/bash\necho \"{name} $*\" >> \"$STUB_LOG\"\n{body}\n")
    path.chmod(0o755)


@pytest.fixture
def machine(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A PATH of stubs: root, apt-get, PostgreSQL 15 installed but down until pg_ctlcluster starts it."""
    bin_dir, etc = tmp_path / "bin", tmp_path / "etc-postgresql"
    bin_dir.mkdir()
    (etc / "15").mkdir(parents=True)
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found is not None
        os.symlink(found, bin_dir / tool)
    started = tmp_path / "pg-started"
    stub(bin_dir, "id", "echo 0")
    stub(bin_dir, "apt-get", "")
    stub(bin_dir, "pg_isready", f'[ -e "{started}" ]')
    stub(bin_dir, "pg_ctlcluster", f'touch "{started}"')
    log = tmp_path / "calls.log"
    log.touch()
    env = {"PATH": str(bin_dir), "STUB_LOG": str(log), "SLIMSCOUT_POSTGRES_ETC": str(etc)}
    return log, env


def run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash")
    assert bash is not None
    return subprocess.run([bash, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_installs_chromium_and_starts_postgres(machine: tuple[Path, dict[str, str]]) -> None:
    log, env = machine
    result = run(env)
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert "apt-get install -y -qq chromium chromium-driver" in calls
    assert calls.index("apt-get update -qq") < calls.index("apt-get install -y -qq chromium chromium-driver")
    assert "pg_ctlcluster --skip-systemctl-redirect 15 main start" in calls
    assert calls[-1] == "pg_isready -h 127.0.0.1 -p 5432 -q"  # waited until it answered


def test_does_nothing_on_a_ready_machine(machine: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    log, env = machine
    bin_dir = Path(env["PATH"])
    for name in ("chromium", "chromedriver"):
        stub(bin_dir, name, "")
    (tmp_path / "pg-started").touch()
    result = run(env)
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == ["pg_isready -h 127.0.0.1 -p 5432 -q"]


def test_readme_command_and_ci_share_the_setup() -> None:
    """bootstrap.sh (the README's test command runs it) calls the set-up; .ci/run calls bootstrap, not apt-get."""
    bootstrap = (REPO / "scripts" / "bootstrap.sh").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "bash scripts/setup-test-env.sh" in bootstrap
    assert "bash scripts/bootstrap.sh" in ci
    assert "apt-get" not in ci and "pg_ctlcluster" not in ci
