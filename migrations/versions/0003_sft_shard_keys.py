"""longer job tokenizer keys: fine-tuning jobs name their base model and shard variant

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 19:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column(
            "tokenizer_key", type_=sa.String(length=120), existing_type=sa.String(length=40)
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column(
            "tokenizer_key", type_=sa.String(length=40), existing_type=sa.String(length=120)
        )
