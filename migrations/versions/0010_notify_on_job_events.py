"""notify on job events

A trigger sends NOTIFY loraq_job_events '<job id>' when an event of a job is inserted (delivered at commit;
several in one transaction are folded into one), so an API process streaming that job's events reads them at
once instead of at its next poll. PostgreSQL only: on SQLite the event tails poll.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 18:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE OR REPLACE FUNCTION loraq_notify_job_event() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('loraq_job_events', NEW.job_id);
            RETURN NULL;
        END;
        $$ LANGUAGE plpgsql
        """
    )
    op.execute(
        "CREATE TRIGGER job_events_notify_insert AFTER INSERT ON job_events "
        "FOR EACH ROW EXECUTE FUNCTION loraq_notify_job_event()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS job_events_notify_insert ON job_events")
    op.execute("DROP FUNCTION IF EXISTS loraq_notify_job_event()")
