"""slimscout_study_groups: the studies one multi-budget request created, one per budget

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "slimscout_study_groups",
        sa.Column("id", sa.String(length=12), nullable=False),
        sa.Column("spec", _JSON, nullable=False),
        sa.Column("study_ids", _JSON, nullable=False),
        sa.Column("owner_token_hash", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_slimscout_study_groups")),
    )
    op.create_index(op.f("ix_slimscout_study_groups_owner_token_hash"), "slimscout_study_groups",
                    ["owner_token_hash"])


def downgrade() -> None:
    op.drop_index(op.f("ix_slimscout_study_groups_owner_token_hash"), table_name="slimscout_study_groups")
    op.drop_table("slimscout_study_groups")
