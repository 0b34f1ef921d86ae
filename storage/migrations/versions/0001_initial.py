"""slimscout_studies and slimscout_artifacts

Revision ID: 0001
Revises:
Create Date: 2025-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "slimscout_studies",
        sa.Column("id", sa.String(length=12), nullable=False),
        sa.Column("optuna_study_name", sa.String(length=64), nullable=False),
        sa.Column("model_id", sa.String(length=1024), nullable=False),
        sa.Column("dataset", sa.String(length=256), nullable=False),
        sa.Column("split", sa.String(length=64), server_default="search", nullable=False),
        sa.Column("budget", sa.Float(), nullable=False),
        sa.Column("operators", _JSON, nullable=False),
        sa.Column("granularity", sa.String(length=32), nullable=False),
        sa.Column("n_trials", sa.Integer(), nullable=False),
        sa.Column("eval_tokens", sa.Integer(), nullable=False),
        sa.Column("objective", sa.String(length=64), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="queued", nullable=False),
        sa.Column("owner_token_hash", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("summary", _JSON, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_slimscout_studies")),
        sa.UniqueConstraint("optuna_study_name", name=op.f("uq_slimscout_studies_optuna_study_name")),
    )
    op.create_index(
        op.f("ix_slimscout_studies_owner_token_hash"), "slimscout_studies", ["owner_token_hash"]
    )
    op.create_index(
        "ix_slimscout_studies_status_created_at", "slimscout_studies", ["status", "created_at"]
    )
    op.create_table(
        "slimscout_artifacts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("study_id", sa.String(length=12), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("path", sa.String(length=4096), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["slimscout_studies.id"],
            name=op.f("fk_slimscout_artifacts_study_id_slimscout_studies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_slimscout_artifacts")),
        sa.UniqueConstraint("study_id", "kind", name=op.f("uq_slimscout_artifacts_study_id_kind")),
    )


def downgrade() -> None:
    op.drop_table("slimscout_artifacts")
    op.drop_index("ix_slimscout_studies_status_created_at", table_name="slimscout_studies")
    op.drop_index(op.f("ix_slimscout_studies_owner_token_hash"), table_name="slimscout_studies")
    op.drop_table("slimscout_studies")
