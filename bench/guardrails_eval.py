"""Precision and recall of each guardrail detector on the labelled prompt set.

    python bench/guardrails_eval.py [--set tests/dispatcher/guardrails/data/prompts.jsonl]

Prompt-level: a detector counts a true positive when a prompt labelled with its kind is flagged, a
false positive when an unlabelled prompt is. Also checks that masking leaves no detected entity in
what the model would receive (masked text, detected again, finds nothing). The test suite asserts
floors on these figures; docs/guardrails.md shows the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dispatcher.guardrails.findings import mask
from dispatcher.guardrails.injection import detect_injection
from dispatcher.guardrails.pii import detect_pii
from schemas.policy import PII_KINDS

DEFAULT_SET = Path(__file__).resolve().parents[1] / "tests/dispatcher/guardrails/data/prompts.jsonl"
DETECTORS = (*PII_KINDS, "injection")


@dataclass
class Score:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0


def load(path: Path = DEFAULT_SET) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def flagged(text: str) -> set[str]:
    return {f.kind for f in detect_pii(text)} | ({"injection"} if detect_injection(text) else set())


def evaluate(rows: list[dict[str, object]]) -> tuple[dict[str, Score], list[str]]:
    """Scores per detector, and the masked texts in which something was still detected."""
    scores = {name: Score() for name in DETECTORS}
    leaks: list[str] = []
    for row in rows:
        text = str(row["text"])
        labels = set(row["labels"])  # type: ignore[arg-type]
        found = flagged(text)
        for name, score in scores.items():
            if name in labels:
                score.tp += name in found
                score.fn += name not in found
            else:
                score.fp += name in found
                score.tn += name not in found
        masked = mask(text, detect_pii(text))
        if detect_pii(masked):
            leaks.append(masked)
    return scores, leaks


def table(scores: dict[str, Score]) -> str:
    lines = [
        "| detector | positives | precision | recall | false positives | missed |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in scores.items():
        lines.append(f"| {name} | {s.tp + s.fn} | {s.precision:.2f} | {s.recall:.2f} | {s.fp} | {s.fn} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", type=Path, default=DEFAULT_SET)
    parser.add_argument("--show-misses", action="store_true")
    args = parser.parse_args()
    rows = load(args.set)
    scores, leaks = evaluate(rows)
    print(f"{len(rows)} prompts, {sum(1 for r in rows if not r['labels'])} clean\n")
    print(table(scores))
    print(f"\nmasked prompts with an entity still detected: {len(leaks)}")
    if args.show_misses:
        for row in rows:
            found, labels = flagged(str(row["text"])), set(row["labels"])  # type: ignore[arg-type]
            if found != labels:
                print(f"labels={sorted(labels)} found={sorted(found)}: {row['text']!r}")


if __name__ == "__main__":
    main()
