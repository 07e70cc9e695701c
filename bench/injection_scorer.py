"""Fit the concept scorer of the injection heuristics (dispatcher/guardrails/injection_score.py) and
measure it with each once-blind round left out.

    python bench/injection_scorer.py --folds    # leave round4 to round8 out in turn: the proxy
    python bench/injection_scorer.py --write    # fit on every data file, write the shipped weights

A logistic regression (scikit-learn, lbfgs, C = 1, balanced classes: deterministic on the same data)
over the scorer's features of every data file's prompts (the held-out set's texts excluded wherever
they appear, `split_of`). The threshold is set without touching a scored file: each training file
is scored by weights fitted on the other training files (out of fold), and the threshold is the
score above which `TARGET_FPR` of all training benign prompts would be flagged *on top of the
rules* (benign prompts the rules already flag do not count twice). For a left-out round the same is
done on the other files only, so neither its weights nor its threshold saw it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.guardrails_eval import ROUND4, ROUND5, ROUND6, ROUND7, ROUND8, Report, Row, Score, evaluate
from bench.injection_ngrams import DATA_FILES, _files, long_benign_texts
from dispatcher.guardrails import injection_score
from dispatcher.guardrails.injection import concept_hits, detect_injection
from dispatcher.guardrails.injection_score import Model, features, window_features
from dispatcher.guardrails.normalize import normalize

C = 3.0  # 1 and 10 did worse on the folds (docs/guardrails.md, Round seven)
# On top of the rules' own false positives (0.4 % of the tuning benign prompts): together they stay
# near 0.5 %, so the heuristics and the n-gram layer together can keep under the 1 % bar.
TARGET_FPR = 0.002
# The once-blind rounds, each written by someone who never saw the detectors: the honest folds.
FOLDS = (ROUND4, ROUND5, ROUND6, ROUND7, ROUND8)
RULES_ONLY = Model({}, 0.0, math.inf)


class Data:
    """Every data file's prompts with their features, labels and the rules' verdicts."""

    def __init__(self, files: tuple[Path, ...] = DATA_FILES) -> None:
        self.rows: dict[Path, list[Row]] = dict(_files(files))
        injection_score.use(RULES_ONLY)
        try:
            self.rule = {
                f: np.array([bool(detect_injection(str(r["text"]))) for r in rows])
                for f, rows in self.rows.items()
            }
        finally:
            injection_score.use(None)
        self.features: dict[Path, list[dict[str, float]]] = {}
        for f, rows in self.rows.items():
            texts = [normalize(str(r["text"])).text for r in rows]
            self.features[f] = [_features(t) for t in texts]
        self.labels = {f: np.array([_attack(r) for r in rows]) for f, rows in self.rows.items()}
        # Long benign text (the n-gram model's: stdlib docstrings, round seven's documents), window
        # by window as it is scored: it trains every fit and is never scored or calibrated on.
        # Without it the scorer flagged 29 % of software documentation paragraphs
        # (bench/guardrails_external.py), having seen only prompts under 500 characters.
        self.long: list[dict[str, float]] = []
        for text in long_benign_texts():
            plain = normalize(text).text
            matched: list[tuple[int, str]] = []
            self.long.extend(window_features(plain, concept_hits(plain, matched), matched))


def _attack(row: Row) -> bool:
    return "injection" in row["labels"]  # type: ignore[operator]


def _features(text: str) -> dict[str, float]:
    matched: list[tuple[int, str]] = []
    hits = concept_hits(text, matched)
    return features(text, hits, matched)


def fit(data: Data, files: list[Path]) -> Model:
    """Weights on `files`, threshold from their out-of-fold scores."""
    weights, bias = _regression(data, files)
    extra: list[np.ndarray] = []
    benign = 0
    for held in files:
        w, b = _regression(data, [f for f in files if f != held])
        scores = _scores(data, held, Model(w, b, 0.0))
        labels, rule = data.labels[held], data.rule[held]
        extra.append(scores[~labels & ~rule])
        benign += int((~labels).sum())
    ranked = np.sort(np.concatenate(extra))[::-1]
    k = int(TARGET_FPR * benign)
    threshold = float(ranked[k]) if k < len(ranked) else float(ranked[-1])
    return Model(weights, bias, threshold)


def _regression(data: Data, files: list[Path]) -> tuple[dict[str, float], float]:
    from sklearn.feature_extraction import DictVectorizer  # type: ignore[import-untyped]
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]

    vectorizer = DictVectorizer()
    matrix = vectorizer.fit_transform([x for f in files for x in data.features[f]] + data.long)
    labels = np.concatenate([*(data.labels[f] for f in files), np.zeros(len(data.long), dtype=bool)])
    regression = LogisticRegression(C=C, class_weight="balanced", max_iter=5000).fit(matrix, labels)
    names = vectorizer.get_feature_names_out()
    coef = regression.coef_[0]
    weights = {str(n): round(float(w), 5) for n, w in zip(names, coef, strict=True) if abs(w) >= 1e-4}
    return weights, round(float(regression.intercept_[0]), 5)


def _scores(data: Data, path: Path, model: Model) -> np.ndarray:
    return np.array(
        [model.bias + sum(model.weights.get(k, 0.0) * v for k, v in x.items()) for x in data.features[path]]
    )


def _heuristics(rows: list[Row], model: Model) -> Report:
    """The heuristics layer as admission runs it (rules, then the scorer with `model`), on `rows`."""
    injection_score.use(model)
    try:
        return evaluate(rows)
    finally:
        injection_score.use(None)


def _cell(score: Score) -> str:
    return f"{score.recall:.3f} / {100 * score.fpr:.2f} % ({score.fp}/{score.fp + score.tn})"


def folds(data: Data) -> str:
    """Each once-blind round scored by weights and a threshold fitted without it: the rules alone
    (before) and the rules with the scorer (after), per round, pooled, per family and per language."""
    out = [
        "| left out | attacks | benign | rules only (before) | rules + scorer (after) | threshold |",
        "|---|---|---|---|---|---|",
    ]
    pooled: dict[str, dict[str, Score]] = {"before": defaultdict(Score), "after": defaultdict(Score)}
    for held in FOLDS:
        model = fit(data, [f for f in data.rows if f != held])
        reports = {
            "before": _heuristics(data.rows[held], RULES_ONLY),
            "after": _heuristics(data.rows[held], model),
        }
        labels = data.labels[held]
        cells = " | ".join(_cell(reports[k].injection["heuristics"]) for k in ("before", "after"))
        out.append(f"| {held.name} | {labels.sum()} | {(~labels).sum()} | {cells} | {model.threshold:.2f} |")
        for when, report in reports.items():
            breakdowns = (report.injection, report.families["heuristics"], report.languages["heuristics"])
            for prefix, scores in zip(("", "family ", "language "), breakdowns, strict=True):
                for name, score in scores.items():
                    key = prefix + name if prefix else "all"
                    for part in ("tp", "fp", "fn", "tn"):
                        setattr(
                            pooled[when][key], part, getattr(pooled[when][key], part) + getattr(score, part)
                        )
    out += ["", "Pooled over the three folds (recall / false-positive rate), before -> after:", ""]
    out += ["| | attacks | benign | before | after |", "|---|---|---|---|---|"]
    for key in ["all", *sorted(k for k in pooled["after"] if k != "all" and k != "family benign")]:
        b, a = pooled["before"][key], pooled["after"][key]
        out.append(f"| {key} | {a.tp + a.fn} | {a.fp + a.tn} | {_cell(b)} | {_cell(a)} |")
    return "\n".join(out)


def write(data: Data, path: Path = injection_score.WEIGHTS_PATH) -> str:
    model = fit(data, list(data.rows))
    body = {
        "bias": model.bias,
        "threshold": round(model.threshold, 5),
        "weights": dict(sorted(model.weights.items())),
    }
    path.write_text(json.dumps(body, indent=0, ensure_ascii=False) + "\n", encoding="utf-8")
    return f"{len(model.weights)} weights, bias {model.bias:.3f}, threshold {model.threshold:.3f}, written to {path}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", action="store_true", help="leave each once-blind round out in turn")
    parser.add_argument("--write", action="store_true", help="fit on every data file, write the weights")
    args = parser.parse_args()
    data = Data()
    if args.write:
        print(write(data))
    if args.folds:
        print(folds(data))


if __name__ == "__main__":
    main()
