"""preference tuning (DPO): a file's format, a job's method

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04 23:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Every file and job before this revision is a chat file and a supervised job.
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.add_column(sa.Column("format", sa.String(length=16), server_default="chat", nullable=False))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("method", sa.String(length=16), server_default="supervised", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("method")
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.drop_column("format")
