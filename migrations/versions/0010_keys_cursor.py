"""keys that expire; indexes that serve the job list's cursor

Revision ID: 0010_keys_cursor
Revises: 0009_faults
Create Date: 2026-11-26 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_keys_cursor"
down_revision: str | None = "0009_faults"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_jobs_project_id", "jobs", ["project_id", "id"])
    # Replaces (project_id, status): the same prefix, and the list by status pages on id.
    op.create_index("ix_jobs_project_status_id", "jobs", ["project_id", "status", "id"])
    op.drop_index("ix_jobs_project_status", table_name="jobs")


def downgrade() -> None:
    op.create_index("ix_jobs_project_status", "jobs", ["project_id", "status"])
    op.drop_index("ix_jobs_project_status_id", table_name="jobs")
    op.drop_index("ix_jobs_project_id", table_name="jobs")
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.drop_column("expires_at")
