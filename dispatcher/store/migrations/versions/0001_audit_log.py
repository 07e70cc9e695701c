"""The append-only, hash-chained audit log, partitioned by month.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None

_REFUSE = """
CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit records are append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$
"""


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE audit_log (
            seq               bigint      NOT NULL,
            received_at       timestamptz NOT NULL,
            event_id          text        NOT NULL,
            request_id        text        NOT NULL,
            kind              text        NOT NULL,
            endpoint          text        NOT NULL,
            status            text        NOT NULL,
            http_status       integer     NOT NULL,
            consumer          text,
            key_id            text,
            model_requested   text,
            model_served      text,
            version           text,
            prompt_hash       text,
            finish_reason     text,
            prompt_tokens     integer,
            completion_tokens integer,
            latency_ms        integer,
            trace_id          text,
            record            text        NOT NULL,
            prev_hash         text        NOT NULL,
            row_hash          text        NOT NULL,
            PRIMARY KEY (seq, received_at),
            UNIQUE (event_id, received_at)
        ) PARTITION BY RANGE (received_at)
        """
    )
    op.execute("CREATE INDEX audit_log_event_id ON audit_log (event_id)")
    op.execute("CREATE INDEX audit_log_model ON audit_log (model_served, version, received_at)")
    op.execute("CREATE INDEX audit_log_consumer ON audit_log (consumer, received_at)")
    op.execute("CREATE INDEX audit_log_prompt ON audit_log (prompt_hash)")
    op.execute(
        """
        CREATE TABLE audit_chain_head (
            id   smallint PRIMARY KEY CHECK (id = 1),
            seq  bigint   NOT NULL,
            hash text     NOT NULL
        )
        """
    )
    op.execute("INSERT INTO audit_chain_head VALUES (1, 0, 'genesis')")
    op.execute(
        """
        CREATE TABLE audit_retention (
            id         bigserial   PRIMARY KEY,
            partition  text        NOT NULL,
            range_from timestamptz NOT NULL,
            range_to   timestamptz NOT NULL,
            rows       bigint      NOT NULL,
            first_seq  bigint,
            last_seq   bigint,
            last_hash  text,
            removed_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(_REFUSE)
    for table in ("audit_log", "audit_retention"):
        # Row triggers on a partitioned table are cloned onto every partition, present and future.
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change()"
        )


def downgrade() -> None:
    op.execute("DROP TABLE audit_retention")
    op.execute("DROP TABLE audit_chain_head")
    op.execute("DROP TABLE audit_log")
    op.execute("DROP FUNCTION audit_refuse_change()")
