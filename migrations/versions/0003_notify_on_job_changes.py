"""notify on job changes

A trigger sends NOTIFY loraq_jobs '<job id>' on every insert, update or delete of a job (delivered at
commit), so API processes can cache serialised jobs and evict them the moment a row changes. PostgreSQL
only: the embedded SQLite mode does not cache.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 16:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE OR REPLACE FUNCTION loraq_notify_job_change() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('loraq_jobs', COALESCE(NEW.id, OLD.id));
            RETURN NULL;
        END;
        $$ LANGUAGE plpgsql
        """
    )
    op.execute(
        "CREATE TRIGGER jobs_notify_change AFTER INSERT OR UPDATE OR DELETE ON jobs "
        "FOR EACH ROW EXECUTE FUNCTION loraq_notify_job_change()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS jobs_notify_change ON jobs")
    op.execute("DROP FUNCTION IF EXISTS loraq_notify_job_change()")
