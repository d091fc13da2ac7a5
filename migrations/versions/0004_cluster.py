"""cluster: gang attempts (one row per node rank), node addresses, job priority and restart
counts, admin keys, project quotas

Revision ID: 0004_cluster
Revises: 0003
Create Date: 2026-11-26 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_cluster"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("address", sa.String(length=255), nullable=True))
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("rank", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("nodes", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("master_port", sa.Integer(), nullable=True))
        batch.drop_constraint("uq_attempt_number", type_="unique")
        batch.create_unique_constraint("uq_attempt_number_rank", ["job_id", "number", "rank"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="50"))
        batch.add_column(sa.Column("restarts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("waiting_reason", sa.Text(), nullable=True))
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(
            sa.Column("admin", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "quotas",
        sa.Column(
            "project_id",
            sa.String(length=40),
            sa.ForeignKey("projects.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("max_running_slots", sa.Integer(), nullable=True),
        sa.Column("max_queued_jobs", sa.Integer(), nullable=True),
        sa.Column("max_storage_bytes", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("quotas")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("admin")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("waiting_reason")
        batch.drop_column("restarts")
        batch.drop_column("priority")
    with op.batch_alter_table("attempts") as batch:
        batch.drop_constraint("uq_attempt_number_rank", type_="unique")
        batch.create_unique_constraint("uq_attempt_number", ["job_id", "number"])
        batch.drop_column("master_port")
        batch.drop_column("nodes")
        batch.drop_column("rank")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("address")
