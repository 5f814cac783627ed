"""pause and resume: a pause pending on a validating or running job, when a paused job was paused, and the time
it has spent paused (left out of its run-time limit)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.base

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pause_requested", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column("paused_at", models.base.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("paused_seconds", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    # The code before this revision knows no `paused` status: paused jobs go back to the queue (their enqueue
    # time is old, so the reconciler sends them again, and they resume from their newest checkpoint).
    op.execute(sa.text("UPDATE jobs SET status = 'queued' WHERE status = 'paused'"))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("paused_seconds")
        batch_op.drop_column("paused_at")
        batch_op.drop_column("pause_requested")
