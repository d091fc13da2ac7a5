"""cleaned datasets: the source they came from, the options used and the report

Revision ID: 0006_cleaning
Revises: 0005_service
Create Date: 2026-11-26 03:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_cleaning"
down_revision: str | None = "0005_service"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("source_dataset_id", sa.String(length=40), nullable=True))
        batch.add_column(sa.Column("cleaning", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("cleaning_report", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("cleaning_report")
        batch.drop_column("cleaning")
        batch.drop_column("source_dataset_id")
