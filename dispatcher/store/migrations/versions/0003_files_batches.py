"""Files and batches (OpenAI Files and Batch APIs); batch lines are tasks.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE files (
            id         text        PRIMARY KEY,
            consumer   text        NOT NULL,
            filename   text        NOT NULL,
            purpose    text        NOT NULL,
            bytes      bigint      NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            content    bytea       NOT NULL
        )
        """
    )
    op.execute("CREATE INDEX files_consumer ON files (consumer, created_at)")
    op.execute(
        """
        CREATE TABLE batches (
            id                text        PRIMARY KEY,
            consumer          text        NOT NULL,
            status            text        NOT NULL,
            endpoint          text        NOT NULL,
            input_file_id     text        NOT NULL,
            completion_window text        NOT NULL,
            total             integer     NOT NULL,
            output_file_id    text,
            error_file_id     text,
            metadata          jsonb,
            errors            jsonb,
            created_at        timestamptz NOT NULL DEFAULT now(),
            in_progress_at    timestamptz,
            finalizing_at     timestamptz,
            completed_at      timestamptz,
            cancelling_at     timestamptz,
            cancelled_at      timestamptz,
            expires_at        timestamptz NOT NULL
        )
        """
    )
    op.execute("CREATE INDEX batches_consumer ON batches (consumer, created_at)")
    op.execute("ALTER TABLE tasks ADD COLUMN batch_id text, ADD COLUMN line integer")
    op.execute("CREATE INDEX tasks_batch ON tasks (batch_id, line) WHERE batch_id IS NOT NULL")


def downgrade() -> None:
    op.execute("DROP INDEX tasks_batch")
    op.execute("ALTER TABLE tasks DROP COLUMN batch_id, DROP COLUMN line")
    op.execute("DROP TABLE batches")
    op.execute("DROP TABLE files")
