"""Precision and recall of the guardrails on the labelled sets, per PII kind, attack family and
language, for the heuristics, the classifier model and both.

    python bench/guardrails_eval.py                       # the tuning set (every TUNING file)
    python bench/guardrails_eval.py --split holdout       # heldout.jsonl, if present: the figures to believe
    python bench/guardrails_eval.py --split holdout --classifier   # also the similarity model (torch)
    python bench/guardrails_eval.py --split holdout --classifier ngrams   # or the trained n-gram model
    python bench/guardrails_eval.py --tune-classifier     # the classifier's settings, leave-one-out
    python bench/guardrails_eval.py --cost                # heuristics' cost (2,000 and 100,000 chars)
    python bench/guardrails_eval.py --write-exemplars     # the classifier's exemplars: the tuning set

Tuning data is every file in TUNING: labelled.jsonl (round one; its first-round held-out half,
`first_round_half`, was looked at once and is tuning data since round two), round2.jsonl (round
two's held-out set, measured once and tuning data since round three), round3.jsonl (written in
round three by the author of the detectors) and round3_probe.jsonl (paraphrases the same author
wrote to get past the detectors, measured once, then tuned on), round4.jsonl (round three's blind
held-out set, measured once, tuning data since round four), round5.jsonl (round four's blind set,
tuning data since round five), round5_train.jsonl (written in round five by the detectors'
author), round6_train.jsonl (benign text written in round six by its author), round6.jsonl (round
five's blind set, tuning data since round six), round7.jsonl (round six's blind set, tuning data
since round seven), round7_train.jsonl (long benign documents written in round seven) and
round8.jsonl (round seven's blind set, measured once, tuning data since). The held-out set is
tests/unit/dispatcher/guardrails/data/heldout.jsonl (the eighth blind set, README_heldout.md),
written by someone who never saw the detectors' code or results; a text whose SHA-256
is one of its texts' is held out wherever it appears (`split_of`), so no held-out text is ever tuned
on or used as an exemplar. On the tuning set the classifier is scored leave-one-out (a prompt never
finds itself among the exemplars).

Prompt-level: a true positive is a prompt labelled with a kind and flagged by its detector.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dispatcher.guardrails.findings import mask
from dispatcher.guardrails.injection import detect_injection
from dispatcher.guardrails.pii import detect_pii
from schemas.policy import PII_KINDS

DATA = Path(__file__).resolve().parents[1] / "tests/unit/dispatcher/guardrails/data"
LABELLED = DATA / "labelled.jsonl"
ROUND2 = DATA / "round2.jsonl"
ROUND3 = DATA / "round3.jsonl"
ROUND3_PROBE = DATA / "round3_probe.jsonl"
ROUND4 = DATA / "round4.jsonl"  # round three's blind held-out set, measured once; tuning since round four
ROUND5 = DATA / "round5.jsonl"  # round four's blind held-out set, measured once; tuning since round five
# Written in round five by the detectors' author (README_round5_train.md): training text, no measure.
ROUND5_TRAIN = DATA / "round5_train.jsonl"
# Written in round six by the author of that round's changes (README_round6_train.md): benign
# training text (format requests, corrections, security notices, quoted attacks asked about), no measure.
ROUND6_TRAIN = DATA / "round6_train.jsonl"
ROUND6 = DATA / "round6.jsonl"  # round five's blind held-out set, measured once; tuning since round six
ROUND7 = DATA / "round7.jsonl"  # round six's blind held-out set, measured once; tuning since round seven
# Long benign documents in 15 languages written in round seven by a helper who read no repository
# file (README_round7_train.md): training and calibration text, no measure.
ROUND7_TRAIN = DATA / "round7_train.jsonl"
ROUND8 = DATA / "round8.jsonl"  # round seven's blind held-out set, measured once; tuning since then
TUNING = (
    LABELLED, ROUND2, ROUND3, ROUND3_PROBE, ROUND4, ROUND5, ROUND5_TRAIN, ROUND6_TRAIN, ROUND6, ROUND7,
    ROUND7_TRAIN, ROUND8,
)  # fmt: skip
# The eighth blind set (README_heldout.md), committed at the end of round seven, before its one
# measurement; absent from a checkout until then.
HELDOUT = DATA / "heldout.jsonl"
ORIGINAL = DATA / "prompts.jsonl"
ORIGINAL_HOLDOUT = DATA / "prompts_holdout.jsonl"
EXEMPLARS = Path(__file__).resolve().parents[1] / "workers/backends/injection_exemplars.jsonl"
DETECTORS = (*PII_KINDS, "injection")
Row = dict[str, object]


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def _read(path: Path) -> list[Row]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@functools.cache
def _held_out_digests() -> frozenset[bytes]:
    return frozenset(_digest(str(r["text"])) for r in _read(HELDOUT)) if HELDOUT.exists() else frozenset()


def split_of(text: str) -> str:
    """'holdout' for the texts of the held-out set (by SHA-256), 'tuning' for every other."""
    return "holdout" if _digest(text) in _held_out_digests() else "tuning"


def first_round_half(text: str) -> str:
    """The first round's halves of labelled.jsonl (first byte of the SHA-256); both are tuning now."""
    return "holdout" if _digest(text)[0] < 128 else "tuning"


def load(path: Path | None = None, split: str = "all") -> list[Row]:
    """One file, or the split's rows from the tuning files and the held-out file together."""
    if path is not None:
        rows = _read(path)
    else:
        files = [*TUNING, *([HELDOUT] if HELDOUT.exists() else [])]
        rows = [row for f in files if f.exists() for row in _read(f)]
    return [r for r in rows if split == "all" or split_of(str(r["text"])) == split]


@dataclass
class Score:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, labelled: bool, flagged: bool) -> None:
        self.tp += labelled and flagged
        self.fn += labelled and not flagged
        self.fp += flagged and not labelled
        self.tn += not labelled and not flagged

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def fpr(self) -> float:
        return self.fp / (self.fp + self.tn) if self.fp + self.tn else 0.0


@dataclass
class Report:
    rows: int = 0
    pii: dict[str, Score] = field(default_factory=lambda: {k: Score() for k in PII_KINDS})
    # layer -> overall, by family, by language
    injection: dict[str, Score] = field(default_factory=dict)
    families: dict[str, dict[str, Score]] = field(default_factory=dict)
    languages: dict[str, dict[str, Score]] = field(default_factory=dict)
    leaks: list[str] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)


def heuristic_flags(text: str) -> set[str]:
    return {f.kind for f in detect_pii(text)} | ({"injection"} if detect_injection(text) else set())


Classify = Callable[[str, bool], bool]  # (text, leave it out of the exemplars) -> flagged


def evaluate(rows: list[Row], classify: Classify | None = None, tuning: bool = False) -> Report:
    report = Report(rows=len(rows))
    layers = ["heuristics", *(["classifier", "combined"] if classify is not None else [])]
    for layer in layers:
        report.injection[layer] = Score()
        report.families[layer] = defaultdict(Score)
        report.languages[layer] = defaultdict(Score)
    for row in rows:
        text = str(row["text"])
        labels = set(row["labels"])  # type: ignore[call-overload]
        found = heuristic_flags(text)
        for kind in PII_KINDS:
            report.pii[kind].add(kind in labels, kind in found)
        masked = mask(text, detect_pii(text))
        if detect_pii(masked):
            report.leaks.append(masked)
        attack = "injection" in labels
        verdicts = {"heuristics": "injection" in found}
        if classify is not None:
            verdicts["classifier"] = classify(text, tuning)
            verdicts["combined"] = verdicts["classifier"] or verdicts["heuristics"]
        for layer, flagged in verdicts.items():
            report.injection[layer].add(attack, flagged)
            family = str(row.get("family", "")) if attack else "benign"
            report.families[layer][family].add(attack, flagged)
            report.languages[layer][str(row.get("lang", "?"))].add(attack, flagged)
        if found - {"injection"} != labels - {"injection"} or verdicts["heuristics"] != attack:
            report.misses.append(f"labels={sorted(labels)} found={sorted(found)}: {text!r}")
    return report


def tables(report: Report) -> str:
    out = [
        "| PII kind | positives | precision | recall | false positives | missed |",
        "|---|---|---|---|---|---|",
    ]
    for kind, s in report.pii.items():
        out.append(f"| {kind} | {s.tp + s.fn} | {s.precision:.2f} | {s.recall:.2f} | {s.fp} | {s.fn} |")
    layers = list(report.injection)
    out += ["", "| injection | " + " | ".join(layers) + " |", "|---|" + "---|" * len(layers)]
    measures: list[tuple[str, Callable[[Score], str]]] = [
        ("precision", lambda s: f"{s.precision:.2f}"),
        ("recall", lambda s: f"{s.recall:.2f}"),
        ("false-positive rate on benign prompts", lambda s: f"{s.fpr:.3f} ({s.fp}/{s.fp + s.tn})"),
    ]
    for label, get in measures:
        out.append(f"| {label} | " + " | ".join(get(report.injection[layer]) for layer in layers) + " |")
    out += [
        "",
        "| family (recall) | attacks | " + " | ".join(layers) + " |",
        "|---|---|" + "---|" * len(layers),
    ]
    for family in sorted(f for f in report.families["heuristics"] if f != "benign"):
        n = report.families["heuristics"][family]
        row = " | ".join(f"{report.families[layer][family].recall:.2f}" for layer in layers)
        out.append(f"| {family} | {n.tp + n.fn} | {row} |")
    out += [
        "",
        "| language | attacks | recall: "
        + " / ".join(layers)
        + " | benign | false positives: "
        + " / ".join(layers)
        + " |",
        "|---|---|---|---|---|",
    ]
    for lang in sorted(report.languages["heuristics"]):
        n = report.languages["heuristics"][lang]
        recall = " / ".join(f"{report.languages[layer][lang].recall:.2f}" for layer in layers)
        fps = " / ".join(str(report.languages[layer][lang].fp) for layer in layers)
        out.append(f"| {lang} | {n.tp + n.fn} | {recall} | {n.fp + n.tn} | {fps} |")
    return "\n".join(out)


def classifier(kind: str = "similarity") -> tuple[Classify, Callable[[str], float]]:
    """The model layer in process (the same code the worker serves), with the default settings.
    `ngrams`: the trained n-gram model, which was trained on every tuning prompt (no leave-one-out:
    its honest figures are bench/injection_ngrams.py --folds and the held-out set)."""
    if kind == "ngrams":
        from workers.backends.ngram_classifier import NgramModel

        model = NgramModel()

        def timed_ngrams(text: str) -> float:
            started = time.perf_counter()
            model.score(text)
            return (time.perf_counter() - started) * 1000

        return (lambda text, _leave_out: model.score(text).injection), timed_ngrams
    from schemas.config import InjectionSimilarityBackend
    from workers.backends.similarity import SimilarityDetector

    detector = SimilarityDetector(InjectionSimilarityBackend())

    def classify(text: str, leave_out: bool) -> bool:
        return detector.classify(text, exclude=text if leave_out else None).injection

    def timed(text: str) -> float:
        started = time.perf_counter()
        detector.classify(text)
        return (time.perf_counter() - started) * 1000

    return classify, timed


def tune_classifier(probe: Path | None = None) -> str:
    """The classifier's settings on the tuning set, leave-one-out: for each number of neighbours,
    threshold and margin, benign prompts flagged and attacks caught that the heuristics missed.
    With `probe` (one tuning file), leave that whole file out instead and score only its prompts:
    siblings of a prompt (the same attack in another language) then cannot vouch for it, which is
    closer to text nobody wrote exemplars for. Every segment is embedded once; the grid is matrix
    arithmetic."""
    import numpy as np

    from schemas.config import InjectionSimilarityBackend
    from workers.backends.similarity import SimilarityDetector, _segments

    config = InjectionSimilarityBackend()
    detector = SimilarityDetector(config)
    rows = load(split="tuning")
    probed = {str(r["text"]) for r in _read(probe)} if probe is not None else set()
    if probe is not None:
        rows = [r for r in rows if str(r["text"]) in probed]
    owner: list[int] = []
    segments: list[str] = []
    for i, row in enumerate(rows):
        pieces = _segments(str(row["text"]), config.max_segments)
        segments.extend(pieces)
        owner.extend([i] * len(pieces))
    vectors = detector.embed(segments)
    index = {t: i for i, t in enumerate(detector.attack_texts)}
    benign_index = {t: i for i, t in enumerate(detector.benign_texts)}
    attack_sim = vectors @ detector._attacks.T
    benign_sim = vectors @ detector._benign.T
    if probed:  # leave the probed file out of the exemplars
        attack_sim[:, [i for i, t in enumerate(detector.attack_texts) if t in probed]] = -1.0
        benign_sim[:, [i for i, t in enumerate(detector.benign_texts) if t in probed]] = -1.0
    for seg, owner_row in enumerate(owner):  # leave one out: a prompt never finds itself
        text = str(rows[owner_row]["text"])
        if text in index:
            attack_sim[seg, index[text]] = -1.0
        if text in benign_index:
            benign_sim[seg, benign_index[text]] = -1.0
    attack = np.array(["injection" in r["labels"] for r in rows])  # type: ignore[operator]
    heuristic = np.array([bool(detect_injection(str(r["text"]))) for r in rows])
    owner_array = np.array(owner)
    lines = ["| k | threshold | margin | benign flagged | attacks flagged | combined recall | combined FP |"]
    for k in (1, 2, 3, 5):
        a = np.sort(attack_sim, axis=1)[:, -k:].mean(axis=1)
        b = np.sort(benign_sim, axis=1)[:, -k:].mean(axis=1)
        for threshold in np.arange(0.40, 0.80, 0.05):
            score = np.where(a >= threshold, a - b, -1.0)
            best = np.full(len(rows), -1.0)
            np.maximum.at(best, owner_array, score)
            for margin in np.arange(0.0, 0.31, 0.02):
                flagged = best >= margin
                fp = int((flagged & ~attack).sum())
                combined = flagged | heuristic
                if fp > 3:
                    continue
                lines.append(
                    f"| {k} | {threshold:.2f} | {margin:.2f} | {fp} | {int((flagged & attack).sum())} | "
                    f"{(combined & attack).sum() / attack.sum():.3f} | {int((combined & ~attack).sum())} |"
                )
    return "\n".join(lines)


def write_exemplars(path: Path = EXEMPLARS) -> int:
    """The tuning set as the classifier's exemplars (their vectors are computed and cached on first use)."""
    rows = load(split="tuning")
    lines = [
        json.dumps(
            {
                "text": r["text"],
                "attack": "injection" in r["labels"],  # type: ignore[operator]
                "family": r.get("family"),
                "lang": r.get("lang"),
            },
            ensure_ascii=False,
        )
        for r in rows
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", type=Path, default=None, help="one file (default: the split)")
    parser.add_argument("--split", choices=["tuning", "holdout", "all"], default="tuning")
    parser.add_argument(
        "--classifier",
        nargs="?",
        const="similarity",
        choices=["similarity", "ngrams"],
        help="also a model layer: similarity (torch) or ngrams (the trained n-gram model)",
    )
    parser.add_argument("--show-misses", action="store_true")
    parser.add_argument("--cost", action="store_true")
    parser.add_argument("--write-exemplars", action="store_true")
    parser.add_argument("--tune-classifier", action="store_true")
    parser.add_argument(
        "--probe", type=Path, default=None, help="with --tune-classifier: leave this file out"
    )
    args = parser.parse_args()
    if args.write_exemplars:
        print(f"{write_exemplars()} exemplars written to {EXEMPLARS}")
        return
    if args.cost:
        from bench.guardrails_cost import adversarial, cost

        print(cost() + "\n\n" + adversarial())
        return
    if args.tune_classifier:
        print(tune_classifier(args.probe))
        return
    if args.split == "holdout" and args.set is None and not HELDOUT.exists():
        print(
            f"no held-out set: {HELDOUT.relative_to(DATA.parents[4])} is not in this checkout.\n"
            "round5.jsonl, the previous blind set, is tuning data now; the next blind set is being\n"
            "written elsewhere. For a proxy, leave one round out: bench/injection_ngrams.py --folds.",
            file=sys.stderr,
        )
        raise SystemExit(2)
    rows = load(args.set, "all") if args.set is not None else load(split=args.split)
    if args.split == "holdout" and args.set is None:
        # A held-out text that also stands in a tuning file was tuned on after all (the split
        # counts it as held out): say how many, so the figures can be read with that in mind.
        tuned = {str(r["text"]) for f in TUNING if f.exists() for r in _read(f)}
        print(f"held-out prompts also in a tuning file: {sum(str(r['text']) in tuned for r in rows)}")
    classify, timed = classifier(args.classifier) if args.classifier else (None, None)
    report = evaluate(rows, classify, tuning=args.split == "tuning")
    print(f"{len(rows)} prompts ({args.split}), {sum(1 for r in rows if not r['labels'])} clean\n")
    print(tables(report))
    print(f"\nmasked prompts with an entity still detected: {len(report.leaks)}")
    if timed is not None:
        times = sorted(timed(str(r["text"])) for r in rows)
        print(
            f"classifier latency per prompt (in process): p50 {statistics.median(times):.1f} ms, "
            f"p99 {times[min(len(times) - 1, int(0.99 * len(times)))]:.1f} ms"
        )
    if args.show_misses:
        print("\n".join(report.misses))


if __name__ == "__main__":
    main()
