"""Storage fixtures: every database test runs on SQLite (a temporary file) and on PostgreSQL.

PostgreSQL is the real server on 127.0.0.1:5432 (user postgres, trust auth); each test session
works in throwaway databases named ``slimscout_test_<random>...`` and drops them at the end.
An unreachable server makes the PostgreSQL cases fail, unless SLIMSCOUT_SKIP_POSTGRES=1.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from storage import dispose_engines, get_engine, init_db, session_scope

REPO_ROOT = Path(__file__).resolve().parents[2]
CHILD_SCRIPT = Path(__file__).resolve().parent / "_storage_child.py"
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres_url(postgres: Any) -> str:
    """The test session's migrated PostgreSQL database (tables are emptied before each test)."""
    url = postgres.create_database()
    init_db(url)
    return url


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def empty_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A brand-new database with no tables at all (for migration tests)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        dispose_engines()
        return
    postgres: Any = request.getfixturevalue("postgres")
    url = postgres.create_database()
    yield url
    postgres.drop_database(url)


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database whose slimscout tables are empty."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'slimscout.db'}"
        init_db(url)
        yield url
        dispose_engines()
        return
    url = request.getfixturevalue("postgres_url")
    with get_engine(url).begin() as connection:
        connection.execute(text("TRUNCATE slimscout_artifacts, slimscout_studies"))
    yield url


@pytest.fixture
def engine(db_url: str) -> Engine:
    return get_engine(db_url)


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with session_scope(engine) as session:
        yield session


class ChildRunner:
    """Runs processes of ``_storage_child.py`` that start their action at the same moment.

    Each child imports and connects first, reports ready, and waits for the go signal, so the
    race is real rather than decided by start-up time.
    """

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path

    def __call__(self, action: str, url: str, count: int, timeout_s: float = 120) -> list[str]:
        """Each child's stdout; fails the test if any child fails."""
        sync_dir = self.tmp_path / f"sync-{secrets.token_hex(4)}"
        sync_dir.mkdir()
        pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        children = [
            subprocess.Popen(
                [sys.executable, str(CHILD_SCRIPT), action, url, str(sync_dir)],
                cwd=REPO_ROOT,
                env={**os.environ, "PYTHONPATH": pythonpath},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(count)
        ]
        try:
            deadline = time.monotonic() + timeout_s
            while len(list(sync_dir.glob("ready-*"))) < count and time.monotonic() < deadline:
                if any(child.poll() is not None for child in children):
                    break  # one died before the start; its stderr says why
                time.sleep(0.005)
            (sync_dir / "go").touch()
            outputs = [child.communicate(timeout=max(1.0, deadline - time.monotonic())) for child in children]
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
        for child, (_, stderr) in zip(children, outputs, strict=True):
            assert child.returncode == 0, f"{action} child failed:\n{stderr}"
        return [stdout for stdout, _ in outputs]


@pytest.fixture
def run_children(tmp_path: Path) -> ChildRunner:
    return ChildRunner(tmp_path)
