"""Engines, the one session scope, and schema migrations for slimscout's own tables.

slimscout's tables live in the same database as Optuna's, so everything here is careful to
stay out of Optuna's way: our tables are prefixed ``slimscout_`` and Alembic records our
schema version in ``slimscout_alembic_version`` (Optuna owns ``alembic_version``).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

__all__ = [
    "MIGRATIONS_DIR",
    "VERSION_TABLE",
    "dispose_engines",
    "get_engine",
    "init_db",
    "make_engine",
    "normalize_url",
    "session_scope",
]

#: Alembic's version table for slimscout's schema; never Optuna's ``alembic_version``.
VERSION_TABLE = "slimscout_alembic_version"
#: Inside the package so that migrations work from an installed wheel, not just a checkout.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

SQLITE_BUSY_TIMEOUT_S = 30
# Key of the PostgreSQL advisory lock that serializes concurrent ``init_db`` calls
# (the bytes of "slimscou", so it is recognisable in pg_locks).
_MIGRATION_LOCK_KEY = 0x736C696D73636F75

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def normalize_url(url: str | URL) -> URL:
    """Parse ``url``; bare ``postgresql://`` (or ``postgres://``) URLs get the psycopg 3 driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _is_sqlite_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or "mode=memory" in str(url)


def _switch_to_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode = WAL``, retried while another process holds the file locked.

    The switch needs an exclusive lock. When another process is mid-transaction (a migration under
    ``BEGIN IMMEDIATE``) while this connection holds its shared lock, SQLite reports the deadlock
    as "database is locked" at once instead of waiting out the busy timeout; trying again after
    the other commits succeeds.
    """
    retrying = Retrying(retry=retry_if_exception(lambda exc: isinstance(exc, sqlite3.OperationalError)
                                                 and "locked" in str(exc)),
                        stop=stop_after_delay(SQLITE_BUSY_TIMEOUT_S), wait=wait_fixed(0.05), reraise=True)
    retrying(cursor.execute, "PRAGMA journal_mode = WAL")


def make_engine(url: str | URL) -> Engine:
    """A new engine for ``url``, configured for many threads and processes sharing one database.

    SQLite: WAL journal (readers never block the writer), a 30 s busy timeout (writers queue
    instead of failing with "database is locked"), foreign keys on, usable from any thread.
    PostgreSQL: the psycopg 3 driver and ``pool_pre_ping`` so a restarted server is survived.
    """
    parsed = normalize_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        kwargs: dict[str, Any] = {
            "connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}
        }
        memory = _is_sqlite_memory(parsed)
        if memory:
            # One shared connection, else every pooled connection sees its own empty database.
            kwargs["poolclass"] = StaticPool
        engine = create_engine(parsed, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            try:
                # busy_timeout first: switching to WAL needs a lock another process may hold.
                cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_S * 1000}")
                if not memory:
                    _switch_to_wal(cursor)
                cursor.execute("PRAGMA foreign_keys = ON")
            finally:
                cursor.close()

        return engine
    if backend == "postgresql":
        return create_engine(parsed, pool_pre_ping=True)
    return create_engine(parsed)


def get_engine(url: str | URL) -> Engine:
    """The process-wide engine for ``url`` (created on first use, then reused)."""
    key = normalize_url(url).render_as_string(hide_password=False)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = make_engine(key)
        return engine


def dispose_engines() -> None:
    """Close and forget every cached engine (tests; before dropping a database)."""
    with _engines_lock:
        engines = list(_engines.values())
        _engines.clear()
    for engine in engines:
        engine.dispose()


def _forget_engines_after_fork() -> None:
    # A forked child must not use (or close) the parent's pooled connections.
    for engine in _engines.values():
        engine.dispose(close=False)
    _engines.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_engines_after_fork)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits when the block succeeds and rolls back when it raises.

    Objects stay readable after the block (``expire_on_commit=False``), so callers may return
    them from the scope.
    """
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str | URL) -> Config:
    """An Alembic config built in code: no alembic.ini is needed, installed or not."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    # ConfigParser interpolates "%"; percent-encoded passwords must survive.
    rendered = normalize_url(url).render_as_string(hide_password=False)
    cfg.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return cfg


def acquire_migration_lock(connection: Connection) -> None:
    """Serialize migrations across processes for the rest of ``connection``'s transaction."""
    backend = connection.dialect.name
    if backend == "postgresql":
        # Released automatically when the transaction ends, even if the process dies.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
    elif backend == "sqlite":
        # pysqlite autocommits DDL, so without an explicit transaction two processes could
        # both see no version table and both try to create it. BEGIN IMMEDIATE takes the write
        # lock up front (waiting out the busy timeout) and makes the whole upgrade atomic.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def init_db(url: str | URL, *, revision: str = "head") -> None:
    """Migrate slimscout's tables in the database at ``url`` to ``revision`` (default: latest).

    Idempotent and safe to call from several processes at once: on PostgreSQL the upgrade
    runs under an advisory lock, on SQLite inside a ``BEGIN IMMEDIATE`` transaction; either
    way a late caller waits, then finds the schema already at head and does nothing.
    """
    cfg = alembic_config(url)
    engine = get_engine(url)
    with engine.begin() as connection:
        acquire_migration_lock(connection)
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)
