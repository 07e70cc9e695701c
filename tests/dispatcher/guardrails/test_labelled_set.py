"""The labelled prompt sets: per-detector precision and recall floors, and nothing left after masking.

The main set (234 prompts) was assembled and the detectors tuned against it; the held-out set (40)
was written afterwards and not tuned on, so its figures are the honest ones for paraphrases.
"""

from __future__ import annotations

from pathlib import Path

from bench.guardrails_eval import DEFAULT_SET, evaluate, load
from schemas.policy import PII_KINDS

HOLDOUT = Path(DEFAULT_SET).with_name("prompts_holdout.jsonl")


def test_main_set_is_large_and_covers_every_kind() -> None:
    rows = load()
    assert len(rows) >= 200
    for kind in (*PII_KINDS, "injection"):
        assert sum(kind in row["labels"] for row in rows) >= 15, kind  # type: ignore[operator]
    assert sum(not row["labels"] for row in rows) >= 50


def test_main_set_floors() -> None:
    scores, leaks = evaluate(load())
    for kind in PII_KINDS:
        assert scores[kind].precision >= 0.95 and scores[kind].recall >= 0.9, (kind, scores[kind])
    assert scores["injection"].precision >= 0.95 and scores["injection"].recall >= 0.85, scores["injection"]
    assert leaks == []  # masking leaves no detectable entity in what the model receives


def test_held_out_floors() -> None:
    scores, leaks = evaluate(load(HOLDOUT))
    for kind in PII_KINDS:
        assert scores[kind].precision >= 0.9 and scores[kind].recall >= 0.9, (kind, scores[kind])
    # Heuristics miss paraphrases (that is what the optional classifier model is for), but never
    # flag the clean prompts.
    assert scores["injection"].precision == 1.0 and scores["injection"].recall >= 0.5
    assert leaks == []
