"""dispatcher/audit/chain.py: rows chained by hash; verify finds an edited, deleted, reordered or
re-indexed row, and accepts an intact chain from genesis or from a retention anchor."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.audit.chain import GENESIS, canonical, chain_hash, prompt_hash, row_for, verify
from schemas.audit import AuditEvent, AuditStatus


def _event(n: int, **fields: Any) -> AuditEvent:
    values: dict[str, Any] = {
        "event_id": f"e{n}",
        "request_id": f"r{n}",
        "endpoint": "chat",
        "status": AuditStatus.SERVED,
        "http_status": 200,
        "consumer": "alice",
        "model_requested": "m",
        "output": f"answer {n}",
        "received_ms": 1_700_000_000_000 + n,
        "finished_ms": 1_700_000_000_050 + n,
    }
    values.update(fields)
    return AuditEvent(**values)


def _chain(count: int, first_seq: int = 1, prev: str = GENESIS) -> list[dict[str, Any]]:
    rows = []
    for seq in range(first_seq, first_seq + count):
        row = row_for(_event(seq), seq, prev)
        rows.append(row)
        prev = row["row_hash"]
    return rows


def _whats(rows: list[dict[str, Any]], anchor: tuple[int, str] = (0, GENESIS)) -> list[str]:
    return [str(problem) for problem in verify(rows, anchor)]


def test_an_intact_chain_verifies() -> None:
    assert verify(_chain(5)) == []


def test_an_edited_record_is_found() -> None:
    rows = _chain(5)
    rows[2]["record"] = rows[2]["record"].replace("answer 3", "answer X")
    assert _whats(rows) == ["seq 3: content does not match its hash: the row was edited"]


def test_an_edit_with_a_recomputed_hash_breaks_the_next_link() -> None:
    rows = _chain(5)
    rows[2]["record"] = rows[2]["record"].replace("answer 3", "answer X")
    rows[2]["row_hash"] = chain_hash(rows[2]["prev_hash"], rows[2]["record"])
    assert _whats(rows) == ["seq 4: previous-hash link broken: a row before it was removed or changed"]


def test_a_deleted_row_is_found() -> None:
    rows = _chain(5)
    del rows[2]
    problems = _whats(rows)
    assert problems == [
        "seq 4: sequence jumps from 2: rows missing or reordered",
        "seq 4: previous-hash link broken: a row before it was removed or changed",
    ]


def test_a_deleted_last_row_is_not_visible_from_the_rows_alone() -> None:
    # Why the store also checks the chain head and signed checkpoints: truncating the tail leaves
    # a valid chain.
    assert verify(_chain(5)[:-1]) == []


def test_reordered_rows_are_found() -> None:
    rows = _chain(5)
    rows[1], rows[2] = rows[2], rows[1]
    problems = _whats(rows)
    assert "seq 3: sequence jumps from 1: rows missing or reordered" in problems
    assert "seq 2: sequence jumps from 3: rows missing or reordered" in problems
    assert any("previous-hash link broken" in p for p in problems)


def test_a_renumbered_row_is_found_even_with_its_links_intact() -> None:
    rows = _chain(3)
    rows[1]["seq"] = 7
    assert "seq 7: record belongs to another position in the chain" in _whats(rows)


@pytest.mark.parametrize("column", ["consumer", "model_requested", "http_status", "request_id"])
def test_an_indexed_column_edited_alone_is_found(column: str) -> None:
    rows = _chain(3)
    rows[1][column] = "forged" if isinstance(rows[1][column], str) else 418
    assert _whats(rows) == [f"seq 2: column {column} differs from the hashed record"]


def test_a_record_that_is_not_json_is_reported_not_raised() -> None:
    rows = _chain(2)
    rows[1]["record"] = "{not json"
    rows[1]["row_hash"] = chain_hash(rows[1]["prev_hash"], rows[1]["record"])
    assert "seq 2: record is not valid JSON" in _whats(rows)


def test_a_chain_cut_by_retention_verifies_from_its_anchor() -> None:
    rows = _chain(6)
    kept = rows[3:]
    anchor = (rows[2]["seq"], rows[2]["row_hash"])
    assert verify(kept, anchor) == []
    assert _whats(kept) != []  # without the anchor the first kept row has no valid predecessor


def test_nul_bytes_are_kept_in_the_record_and_replaced_in_indexed_columns() -> None:
    row = row_for(_event(1, consumer="a\x00b"), 1, GENESIS)
    assert row["consumer"] == "a\ufffdb"  # Postgres text cannot hold NUL
    assert orjson.loads(row["record"])["consumer"] == "a\x00b"
    assert verify([row]) == []


def test_the_record_is_canonical_and_carries_its_position() -> None:
    event = _event(1)
    record = canonical(event, 9)
    assert orjson.loads(record)["seq"] == 9
    assert record == canonical(AuditEvent.model_validate_json(event.model_dump_json()), 9)
    keys = list(orjson.loads(record))
    assert keys == sorted(keys)


def test_prompt_hash_ignores_key_order_and_other_fields() -> None:
    a = prompt_hash({"messages": [{"role": "user", "content": "hi"}], "temperature": 0})
    b = prompt_hash({"max_tokens": 5, "messages": [{"content": "hi", "role": "user"}]})
    assert a == b and a is not None
    assert prompt_hash({"messages": [{"role": "user", "content": "ho"}]}) != a
    assert prompt_hash({"model": "m"}) is None


@given(
    index=st.integers(0, 5),
    field=st.sampled_from(["record", "prev_hash", "row_hash", "seq"]),
    data=st.data(),
)
def test_any_single_change_to_a_chained_row_is_found(index: int, field: str, data: st.DataObject) -> None:
    rows = _chain(6)
    original = rows[index][field]
    if field == "seq":
        changed: Any = data.draw(st.integers(-5, 20).filter(lambda n: n != original))
    else:
        changed = original + data.draw(st.text(min_size=1, max_size=3))
    rows[index][field] = changed
    assert verify(rows) != []
