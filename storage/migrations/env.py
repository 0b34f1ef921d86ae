"""Alembic environment for slimscout's tables (driven by ``storage.db.init_db``)."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import Connection, Enum

from storage.db import VERSION_TABLE, acquire_migration_lock, make_engine
from storage.models import Base, UTCDateTime

config = context.config
target_metadata = Base.metadata


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Autogenerate sees only our tables: Optuna's share the database and are not ours to diff."""
    if type_ == "table":
        return name is not None and name.startswith("slimscout_")
    return True


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Render our custom column types as the plain types the database actually stores."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if type_ == "type" and isinstance(obj, Enum) and not obj.native_enum:
        return f"sa.String(length={obj.length})"
    return False


_OPTIONS: dict[str, Any] = {
    "target_metadata": target_metadata,
    "version_table": VERSION_TABLE,
    "include_name": include_name,
    "render_item": render_item,
    "compare_type": True,
    # ALTERs as batch operations, which SQLite needs and other backends run as plain ALTERs.
    "render_as_batch": True,
}


def run_migrations_offline() -> None:
    """Emit the SQL script instead of running it (``alembic upgrade --sql``)."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **_OPTIONS,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    context.configure(connection=connection, **_OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        # init_db passes its own connection, already holding the migration lock.
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise ValueError("no sqlalchemy.url in the Alembic config; use storage.db.alembic_config(url)")
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            acquire_migration_lock(connection)
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
