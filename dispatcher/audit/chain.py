"""The hash chain over audit rows, and its verification.

Each row stores its whole event as canonical JSON (`record`, sorted keys, the sequence number
included) and `row_hash = sha256(prev_hash + "\\n" + record)`. Editing a row breaks its hash,
deleting one leaves a gap in `seq` and a `prev_hash` that no longer matches, and reordering does
both. The columns that are indexed for queries are checked against the record too, so they
cannot be edited alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas.audit import AuditEvent

GENESIS = "genesis"

# Columns copied out of the record for queries; verify checks them against it.
INDEXED = (
    "event_id",
    "request_id",
    "kind",
    "endpoint",
    "status",
    "http_status",
    "consumer",
    "key_id",
    "model_requested",
    "model_served",
    "version",
    "prompt_hash",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "trace_id",
)


def indexed_value(value: Any) -> Any:
    """A value as its indexed column holds it (and as a filter on that column must be written)."""
    # Postgres text cannot hold NUL; the record (JSON) escapes it, the indexed copies replace it.
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else value


def prompt_hash(payload: Mapping[str, Any]) -> str | None:
    """Digest of what was asked (messages, prompt or input), to pair answers across versions."""
    prompt = next((payload[k] for k in ("messages", "prompt", "input") if k in payload), None)
    if prompt is None:
        return None
    return hashlib.sha256(orjson.dumps(prompt, option=orjson.OPT_SORT_KEYS)).hexdigest()


def canonical(event: AuditEvent, seq: int) -> str:
    body = {"seq": seq, **event.model_dump(mode="json")}
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS).decode()


def chain_hash(prev_hash: str, record: str) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\n" + record.encode()).hexdigest()


def row_for(event: AuditEvent, seq: int, prev_hash: str) -> dict[str, Any]:
    record = canonical(event, seq)
    row: dict[str, Any] = {name: indexed_value(getattr(event, name)) for name in INDEXED}
    row["status"] = event.status.value
    latency = event.finished_ms - event.received_ms if event.finished_ms else None
    row.update(
        seq=seq,
        received_at=datetime.fromtimestamp(event.received_ms / 1000, UTC),
        latency_ms=latency,
        record=record,
        prev_hash=prev_hash,
        row_hash=chain_hash(prev_hash, record),
    )
    return row


@dataclass(frozen=True)
class Problem:
    seq: int
    what: str

    def __str__(self) -> str:
        return f"seq {self.seq}: {self.what}"


def verify(rows: Iterable[Mapping[str, Any]], anchor: tuple[int, str] = (0, GENESIS)) -> list[Problem]:
    """Check rows in `seq` order against the chain; `anchor` is (seq, hash) just before the first.

    The anchor is the genesis, or the last removed row recorded by the retention job.
    """
    problems: list[Problem] = []
    expected_seq, expected_prev = anchor[0] + 1, anchor[1]
    for row in rows:
        seq = int(row["seq"])
        if seq != expected_seq:
            problems.append(
                Problem(seq, f"sequence jumps from {expected_seq - 1}: rows missing or reordered")
            )
        if row["prev_hash"] != expected_prev:
            problems.append(Problem(seq, "previous-hash link broken: a row before it was removed or changed"))
        if chain_hash(row["prev_hash"], row["record"]) != row["row_hash"]:
            problems.append(Problem(seq, "content does not match its hash: the row was edited"))
        try:
            record = orjson.loads(row["record"])
        except orjson.JSONDecodeError:
            problems.append(Problem(seq, "record is not valid JSON"))
            record = {}
        if record.get("seq") != seq:
            problems.append(Problem(seq, "record belongs to another position in the chain"))
        for name in INDEXED:
            if indexed_value(record.get(name)) != row[name]:
                problems.append(Problem(seq, f"column {name} differs from the hashed record"))
        expected_seq, expected_prev = seq + 1, row["row_hash"]
    return problems
