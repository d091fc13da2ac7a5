"""prep claims: one worker prepares a dataset under a tokenizer, with a heartbeat

Revision ID: 0013_prep_claims
Revises: 0012_fair_queue
Create Date: 2026-12-03 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_prep_claims"
down_revision: str | None = "0012_fair_queue"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "prep_claims",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column(
            "dataset_id",
            sa.String(40),
            sa.ForeignKey("datasets.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("tokenizer_key", sa.String(120), nullable=False),
        sa.Column("job_id", sa.String(40), nullable=True),
        sa.Column("worker", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
    )
    # At most one live claim per piece of preparation: the database arbitrates a race.
    op.create_index(
        "uq_prep_claims_active",
        "prep_claims",
        ["kind", "dataset_id", "tokenizer_key"],
        unique=True,
        postgresql_where=sa.text("status = 'active'"),
        sqlite_where=sa.text("status = 'active'"),
    )
    op.create_index("ix_prep_claims_job", "prep_claims", ["job_id"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("prep_waiting_for", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("prep_waiting_for")
    op.drop_index("ix_prep_claims_job", table_name="prep_claims")
    op.drop_index("uq_prep_claims_active", table_name="prep_claims")
    op.drop_table("prep_claims")
