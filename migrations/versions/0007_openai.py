"""OpenAI-compatible fine-tuning: job metadata, suffix, base model as named

Revision ID: 0007_openai
Revises: 0006_cleaning
Create Date: 2026-11-26 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_openai"
down_revision: str | None = "0006_cleaning"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("metadata", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("suffix", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("base_model", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("base_model")
        batch.drop_column("suffix")
        batch.drop_column("metadata")
