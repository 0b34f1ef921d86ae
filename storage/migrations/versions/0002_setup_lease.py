"""slimscout_studies: the setup lease (who builds a claimed study's baselines, and until when)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("slimscout_studies") as batch:
        batch.add_column(sa.Column("setup_owner", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("setup_lease_until", sa.DateTime(timezone=True), nullable=True))
    # Studies claimed before this revision: a worker re-runs their setup if it never finished
    # (setting up is idempotent; a finished setup makes the lease moot).
    op.execute("UPDATE slimscout_studies SET setup_lease_until = updated_at WHERE status = 'running'")


def downgrade() -> None:
    with op.batch_alter_table("slimscout_studies") as batch:
        batch.drop_column("setup_lease_until")
        batch.drop_column("setup_owner")
