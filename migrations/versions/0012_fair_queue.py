"""fair queue: the best priority a project's quota allows, and when each project last had a
job placed (the fair-share tie-break)

Revision ID: 0012_fair_queue
Revises: 0011_result_files
Create Date: 2026-11-26 06:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_fair_queue"
down_revision: str | None = "0011_result_files"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("quotas") as batch:
        batch.add_column(sa.Column("best_priority", sa.Integer(), nullable=True))
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("last_placed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("last_placed_at")
    with op.batch_alter_table("quotas") as batch:
        batch.drop_column("best_priority")
