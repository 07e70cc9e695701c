"""Results of async tasks.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE tasks (
            id           text        PRIMARY KEY,
            consumer     text        NOT NULL,
            status       text        NOT NULL,
            endpoint     text        NOT NULL,
            model        text        NOT NULL,
            created_at   timestamptz NOT NULL,
            completed_at timestamptz,
            record       jsonb       NOT NULL
        )
        """
    )
    op.execute("CREATE INDEX tasks_consumer ON tasks (consumer, created_at)")


def downgrade() -> None:
    op.execute("DROP TABLE tasks")
