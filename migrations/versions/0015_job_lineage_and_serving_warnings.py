"""continued training's lineage ({"job", "step", "model", "checkpoint"}) and the adapter's serving warnings

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04 23:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("serving_warnings", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("serving_warnings")
        batch_op.drop_column("parent")
