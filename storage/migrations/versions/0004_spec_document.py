"""slimscout_studies: one ``spec`` document (search.spec.StudySpec as JSON) replaces the spec columns

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")
# name -> column type, as 0001-0003 created them.
SPEC_COLUMNS: dict[str, sa.types.TypeEngine] = {
    "model_id": sa.String(1024), "dataset": sa.String(256), "split": sa.String(64), "budget": sa.Float(),
    "operators": _JSON, "granularity": sa.String(32), "n_trials": sa.Integer(), "eval_tokens": sa.Integer(),
    "objective": sa.String(64), "seed": sa.Integer(), "warm_start": sa.Boolean(),
}


def _studies(*columns: str) -> sa.TableClause:
    return sa.table("slimscout_studies", sa.column("id", sa.String()),
                    *(sa.column(name, SPEC_COLUMNS.get(name, _JSON)) for name in columns))


def upgrade() -> None:
    with op.batch_alter_table("slimscout_studies") as batch:
        batch.add_column(sa.Column("spec", _JSON, nullable=True))
    bind = op.get_bind()
    old = _studies(*SPEC_COLUMNS)
    new = _studies("spec")
    for row in bind.execute(sa.select(old)).mappings().all():
        spec = {name: row[name] for name in SPEC_COLUMNS}
        if isinstance(spec["operators"], str):  # JSON text on SQLite
            spec["operators"] = json.loads(spec["operators"])
        spec["warm_start"] = bool(spec["warm_start"])
        bind.execute(sa.update(new).where(new.c.id == row["id"]).values(spec=spec))
    with op.batch_alter_table("slimscout_studies") as batch:
        batch.alter_column("spec", existing_type=_JSON, nullable=False)
        for name in SPEC_COLUMNS:
            batch.drop_column(name)


def downgrade() -> None:
    with op.batch_alter_table("slimscout_studies") as batch:
        for name, type_ in SPEC_COLUMNS.items():
            batch.add_column(sa.Column(name, type_, nullable=True))
    bind = op.get_bind()
    both = _studies("spec", *SPEC_COLUMNS)
    for row in bind.execute(sa.select(both.c.id, both.c.spec)).mappings().all():
        spec = row["spec"] if isinstance(row["spec"], dict) else json.loads(row["spec"])
        defaults = {"dataset": "lee-news", "split": "search", "operators": ["wanda"], "granularity": "type-block",
                    "n_trials": 100, "eval_tokens": 2048, "objective": "kl", "seed": 0, "warm_start": False}
        values = {name: spec.get(name, defaults.get(name)) for name in SPEC_COLUMNS}
        bind.execute(sa.update(both).where(both.c.id == row["id"]).values(**values))
    with op.batch_alter_table("slimscout_studies") as batch:
        for name, type_ in SPEC_COLUMNS.items():
            batch.alter_column(name, existing_type=type_, nullable=False)
        batch.drop_column("spec")
