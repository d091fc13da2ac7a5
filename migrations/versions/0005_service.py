"""a shared service: the hash of an idempotent request, and prep deliveries counted

Revision ID: 0005_service
Revises: 0004_cluster
Create Date: 2026-11-26 03:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_service"
down_revision: str | None = "0004_cluster"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("request_hash", sa.String(length=64), nullable=True))
        batch.add_column(
            sa.Column("prep_deliveries", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(
            sa.Column("prep_deliveries", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("prep_deliveries")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("prep_deliveries")
        batch.drop_column("request_hash")
