from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.exc import OperationalError

from common.settings import get_settings
from storage import dispose_engines, normalize_url

POSTGRES_ADMIN_URL = os.environ.get("SLIMSCOUT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
SKIP_POSTGRES = os.environ.get("SLIMSCOUT_SKIP_POSTGRES") == "1"


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
                      request: pytest.FixtureRequest) -> Iterator[None]:
    """Unit tests write caches to a temporary directory; slow tests share the real cache (built once)."""
    if "slow" not in request.keywords:
        monkeypatch.setenv("SLIMSCOUT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def tiny_llama():  # type: ignore[no-untyped-def]
    from compress.catalog import load_model

    return load_model("tiny-llama")


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@dataclass
class PostgresServer:
    """Creates and drops the throwaway databases of one test session."""

    admin: Engine
    prefix: str = field(default_factory=lambda: f"slimscout_test_{secrets.token_hex(4)}")
    created: list[str] = field(default_factory=list)
    counter: Iterator[int] = field(default_factory=itertools.count)

    def create_database(self) -> str:
        name = f"{self.prefix}_{next(self.counter)}"
        with self.admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return self.admin.url.set(database=name).render_as_string(hide_password=False)

    def drop_database(self, url: str) -> None:
        name = make_url(url).database
        dispose_engines()  # our own pooled connections to it
        with self.admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if name in self.created:
            self.created.remove(name)

    def drop_all(self) -> None:
        for name in list(self.created):
            self.drop_database(self.admin.url.set(database=name).render_as_string(hide_password=False))


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    if SKIP_POSTGRES:
        pytest.skip("SLIMSCOUT_SKIP_POSTGRES=1")
    admin = create_engine(normalize_url(POSTGRES_ADMIN_URL), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError as exc:
        admin.dispose()
        pytest.fail(
            f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} ({exc.orig}); start it, or set "
            "SLIMSCOUT_SKIP_POSTGRES=1 to skip the PostgreSQL cases",
            pytrace=False,
        )
    server = PostgresServer(admin)
    try:
        yield server
    finally:
        server.drop_all()
        admin.dispose()
