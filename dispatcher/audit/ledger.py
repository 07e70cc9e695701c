"""Reading and appending audit rows in Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from dispatcher.audit.chain import GENESIS, Problem, indexed_value, row_for, verify
from dispatcher.audit.checkpoints import check
from dispatcher.audit.compare import answer_of, text_similarity
from schemas.audit import AuditCheckpoint, AuditEvent

_COLUMNS = (
    "seq, received_at, event_id, request_id, kind, endpoint, status, http_status, consumer, key_id, "
    "model_requested, model_served, version, prompt_hash, finish_reason, prompt_tokens, "
    "completion_tokens, latency_ms, trace_id, record, prev_hash, row_hash"
)
_COPY_COLUMNS = tuple(c.strip() for c in _COLUMNS.split(","))


def _month(moment: datetime) -> tuple[datetime, datetime]:
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


def partition_name(start: datetime) -> str:
    return f"audit_log_{start:%Y_%m}"


# Which of a batch's event ids are stored already (a redelivered batch). One index probe per id:
# `event_id = ANY(:ids)` is planned as a sequential scan of the whole partition whenever it has no
# statistics (autovacuum off, or a new partition not yet analysed), since by the default
# selectivity a hundred ids match half the table: the sink's cost then grew with the audit log.
_STORED_IDS = text(
    "SELECT u.id FROM unnest(CAST(:ids AS text[])) AS u(id) "
    "CROSS JOIN LATERAL (SELECT 1 FROM audit_log l WHERE l.event_id = u.id LIMIT 1) AS hit"
)


@dataclass
class AuditFilter:
    model: str | None = None
    version: str | None = None
    consumer: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = None
    limit: int = 100


class AuditStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._partitions: set[str] = set()
        self.last_head: tuple[int, str] | None = None  # (seq, row hash) after this store's last commit

    async def append(self, events: Sequence[AuditEvent]) -> int:
        """Append events in one transaction, skipping any already stored; returns rows added.

        The chain head is locked for the transaction, so concurrent sinks append one at a time and
        the chain stays linear.
        """
        async with self._engine.begin() as conn:
            head = (
                await conn.execute(text("SELECT seq, hash FROM audit_chain_head WHERE id = 1 FOR UPDATE"))
            ).one()
            ids = list({e.event_id for e in events})
            stored = await conn.execute(_STORED_IDS, {"ids": ids})
            seen = {row[0] for row in stored}
            seq, prev = int(head.seq), str(head.hash)
            rows = []
            for event in events:
                if event.event_id in seen:
                    continue  # redelivered: one row per event id
                seen.add(event.event_id)
                seq += 1
                row = row_for(event, seq, prev)
                prev = row["row_hash"]
                rows.append(row)
            if not rows:
                return 0
            for moment in {row["received_at"] for row in rows}:
                await self._ensure_partition(conn, moment)
            await _copy_rows(conn, rows)
            await conn.execute(
                text("UPDATE audit_chain_head SET seq = :seq, hash = :hash WHERE id = 1"),
                {"seq": seq, "hash": prev},
            )
        self.last_head = (seq, prev)
        return len(rows)

    async def _ensure_partition(self, conn: AsyncConnection, moment: datetime) -> None:
        start, end = _month(moment)
        name = partition_name(start)
        if name in self._partitions:
            return
        await conn.execute(
            text(
                f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF audit_log "
                f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
            )
        )
        self._partitions.add(name)

    async def rows(self, batch: int = 5000) -> AsyncIterator[dict[str, Any]]:
        """All rows in chain order, read in pages (keyset pagination on seq)."""
        after = -1
        async with self._engine.connect() as conn:
            while True:
                result = await conn.execute(
                    text(f"SELECT {_COLUMNS} FROM audit_log WHERE seq > :after ORDER BY seq LIMIT :n"),
                    {"after": after, "n": batch},
                )
                page = [dict(row._mapping) for row in result]
                if not page:
                    return
                for row in page:
                    yield row
                after = page[-1]["seq"]

    async def verify(self) -> tuple[int, list[Problem]]:
        """Check the whole chain; returns (rows checked, problems)."""
        async with self._engine.connect() as conn:
            anchor_row = (
                await conn.execute(
                    text(
                        "SELECT last_seq, last_hash FROM audit_retention WHERE last_seq IS NOT NULL "
                        "ORDER BY last_seq DESC LIMIT 1"
                    )
                )
            ).first()
        anchor = (int(anchor_row.last_seq), str(anchor_row.last_hash)) if anchor_row else (0, GENESIS)
        rows = [row async for row in self.rows()]
        return len(rows), verify(rows, anchor)

    async def against_checkpoints(
        self, checkpoints: list[AuditCheckpoint], public: Ed25519PublicKey
    ) -> list[Problem]:
        """What the signed heads kept outside Postgres say about the table (see checkpoints.py)."""
        seqs = sorted({c.seq for c in checkpoints})
        async with self._engine.connect() as conn:
            head = (await conn.execute(text("SELECT seq FROM audit_chain_head WHERE id = 1"))).scalar_one()
            last = (await conn.execute(text("SELECT coalesce(max(seq), 0) FROM audit_log"))).scalar_one()
            found = await conn.execute(
                text("SELECT seq, row_hash FROM audit_log WHERE seq = ANY(:seqs)"), {"seqs": seqs}
            )
            rows = {int(r.seq): str(r.row_hash) for r in found}
        return check(checkpoints, public, rows, int(head), int(last))

    async def query(self, where: AuditFilter) -> list[dict[str, Any]]:
        clauses: list[str] = ["TRUE"]
        params: dict[str, Any] = {"limit": where.limit}
        for column, value in (
            ("model_served", where.model),
            ("version", where.version),
            ("consumer", where.consumer),
            ("status", where.status),
        ):
            if value is not None:
                clauses.append(f"{column} = :{column}")
                params[column] = indexed_value(value)
        if where.since is not None:
            clauses.append("received_at >= :since")
            params["since"] = where.since
        if where.until is not None:
            clauses.append("received_at < :until")
            params["until"] = where.until
        if where.text:
            clauses.append("record ILIKE :pattern")
            # The record is JSON, where a NUL is written `\u0000` (Postgres text cannot hold one).
            searched = where.text.replace("\x00", "\\u0000")
            params["pattern"] = (
                "%" + searched.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            )
        sql = (
            f"SELECT seq, record FROM audit_log WHERE {' AND '.join(clauses)} ORDER BY seq DESC LIMIT :limit"
        )
        async with self._engine.connect() as conn:
            result = await conn.execute(text(sql), params)
            return [orjson.loads(row.record) for row in result]

    async def compare_versions(
        self, model: str, old: str, new: str, limit: int = 50, scan: int = 5000
    ) -> dict[str, Any]:
        """Outputs side by side for prompts seen on both versions, the most changed first (of up to
        `scan` prompts), plus per-version aggregates."""
        model, old, new = indexed_value(model), indexed_value(old), indexed_value(new)
        async with self._engine.connect() as conn:
            aggregates = await conn.execute(
                text(
                    "SELECT version, count(*) AS requests, "
                    "avg(completion_tokens) AS avg_completion_tokens, avg(prompt_tokens) AS avg_prompt_tokens, "
                    "avg(length((record::jsonb)->>'output')) AS avg_output_chars, "
                    "percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50_latency_ms, "
                    "percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95_latency_ms, "
                    "avg(CASE WHEN status = 'served' THEN 0 ELSE 1 END) AS error_rate "
                    "FROM audit_log WHERE model_served = :model AND version IN (:old, :new) GROUP BY version"
                ),
                {"model": model, "old": old, "new": new},
            )
            finish = await conn.execute(
                text(
                    "SELECT version, COALESCE(finish_reason, 'none') AS reason, count(*) AS n FROM audit_log "
                    "WHERE model_served = :model AND version IN (:old, :new) GROUP BY 1, 2"
                ),
                {"model": model, "old": old, "new": new},
            )
            pairs = await conn.execute(
                text(
                    "SELECT a.prompt_hash, a.record AS old_record, b.record AS new_record FROM "
                    "(SELECT DISTINCT ON (prompt_hash) prompt_hash, record FROM audit_log "
                    " WHERE model_served = :model AND version = :old AND status = 'served' "
                    " ORDER BY prompt_hash, seq DESC) a "
                    "JOIN (SELECT DISTINCT ON (prompt_hash) prompt_hash, record FROM audit_log "
                    " WHERE model_served = :model AND version = :new AND status = 'served' "
                    " ORDER BY prompt_hash, seq DESC) b USING (prompt_hash) LIMIT :scan"
                ),
                {"model": model, "old": old, "new": new, "scan": scan},
            )
            per_version: dict[str, dict[str, Any]] = {}
            for row in aggregates:
                values = dict(row._mapping)
                per_version[str(values.pop("version"))] = {k: _number(v) for k, v in values.items()}
            for row in finish:
                per_version.setdefault(row.version, {}).setdefault("finish_reasons", {})[row.reason] = row.n
            side_by_side = []
            for row in pairs:
                old_record, new_record = orjson.loads(row.old_record), orjson.loads(row.new_record)
                before, after = old_record.get("output"), new_record.get("output")
                side_by_side.append(
                    {
                        "prompt_hash": row.prompt_hash,
                        "input": old_record.get("input"),
                        old: before,
                        new: after,
                        "similarity": round(text_similarity(answer_of(before), answer_of(after)), 4),
                    }
                )
        side_by_side.sort(key=lambda pair: (pair["similarity"], pair["prompt_hash"]))
        return {"model": model, "versions": per_version, "pairs": side_by_side[:limit]}

    async def remove_partitions_before(self, cutoff: datetime) -> list[dict[str, Any]]:
        """Retention: drop whole monthly partitions that end before `cutoff`, recording each.

        Rows are never deleted one by one (the trigger forbids it); a partition is detached and
        dropped, and its row count, sequence range and last hash go to `audit_retention` first, so
        `verify` can still check the chain from the first remaining row.
        """
        removed = []
        async with self._engine.begin() as conn:
            await conn.execute(text("LOCK TABLE audit_chain_head IN EXCLUSIVE MODE"))
            parts = await conn.execute(
                text(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'audit_log' ORDER BY c.relname"
                )
            )
            for (name,) in parts:
                start = datetime.strptime(name, "audit_log_%Y_%m").replace(tzinfo=UTC)
                _, end = _month(start)
                if end > cutoff:
                    continue
                stats = (
                    await conn.execute(
                        text(f"SELECT count(*) AS n, min(seq) AS first, max(seq) AS last FROM {name}")
                    )
                ).one()
                last_hash = None
                if stats.last is not None:
                    last_hash = (
                        await conn.execute(
                            text(f"SELECT row_hash FROM {name} WHERE seq = :s"), {"s": stats.last}
                        )
                    ).scalar_one()
                entry = {
                    "partition": name,
                    "range_from": start,
                    "range_to": end,
                    "rows": stats.n,
                    "first_seq": stats.first,
                    "last_seq": stats.last,
                    "last_hash": last_hash,
                }
                await conn.execute(
                    text(
                        "INSERT INTO audit_retention (partition, range_from, range_to, rows, first_seq, last_seq, "
                        "last_hash) VALUES (:partition, :range_from, :range_to, :rows, :first_seq, :last_seq, "
                        ":last_hash)"
                    ),
                    entry,
                )
                await conn.execute(text(f"ALTER TABLE audit_log DETACH PARTITION {name}"))
                await conn.execute(text(f"DROP TABLE {name}"))
                self._partitions.discard(name)
                removed.append(entry)
        return removed


async def _copy_rows(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """All rows in one COPY, inside the caller's transaction (the chain head stays locked).

    Measured with bench/audit_ingest.py: a batch of 1000 through COPY costs Postgres and the sink
    less than the same rows as 1000 pipelined INSERTs (see docs/audit.md); partition routing and the
    append-only triggers apply to COPY as to INSERT.
    """
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection  # asyncpg's connection, already in the transaction
    assert driver is not None
    records = [tuple(row[column] for column in _COPY_COLUMNS) for row in rows]
    await driver.copy_records_to_table("audit_log", records=records, columns=_COPY_COLUMNS)


def _number(value: Any) -> Any:
    try:
        return float(value) if value is not None and not isinstance(value, int) else value
    except (TypeError, ValueError):
        return value
