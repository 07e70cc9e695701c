"""Uploaded files in chunks: written as the upload streams in and read back piece by piece, so no
query carries a whole 50 MB file (one such bytea parameter held the ingress's event loop for 1.5 s).

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE file_chunks (
            file_id text    NOT NULL REFERENCES files (id) ON DELETE CASCADE,
            seq     integer NOT NULL,
            data    bytea   NOT NULL,
            PRIMARY KEY (file_id, seq)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE file_chunks")
