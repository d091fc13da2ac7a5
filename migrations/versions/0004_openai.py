"""OpenAI-compatible fine-tuning: job metadata, suffix, base model as named, pause

Revision ID: 0004_openai
Revises: 0003
Create Date: 2026-11-26 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_openai"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("metadata", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("suffix", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("base_model", sa.String(length=255), nullable=True))
        # The default fills existing rows; the models set the value on every insert.
        batch.add_column(
            sa.Column("pause_requested", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("pause_requested", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("pause_requested")
        batch.drop_column("base_model")
        batch.drop_column("suffix")
        batch.drop_column("metadata")
