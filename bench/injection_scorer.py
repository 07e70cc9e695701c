"""Fit the concept scorer of the injection heuristics (dispatcher/guardrails/injection_score.py) and
measure it with each once-blind round left out.

    python bench/injection_scorer.py --folds    # leave round4, round5, round6 out in turn: the proxy
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
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.guardrails_eval import ROUND4, ROUND5, ROUND6, Row, evaluate, tables
from bench.injection_ngrams import DATA_FILES, _files
from dispatcher.guardrails import injection_score
from dispatcher.guardrails.injection import concept_hits, detect_injection
from dispatcher.guardrails.injection_score import Model, features
from dispatcher.guardrails.normalize import normalize

C = 3.0  # 1 and 10 did worse on the folds (docs/guardrails.md, Round seven)
# On top of the rules' own false positives (0.4 % of the tuning benign prompts): together they stay
# near 0.5 %, so the heuristics and the n-gram layer together can keep under the 1 % bar.
TARGET_FPR = 0.002
# The once-blind rounds, each written by someone who never saw the detectors: the honest folds.
FOLDS = (ROUND4, ROUND5, ROUND6)
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
    matrix = vectorizer.fit_transform([x for f in files for x in data.features[f]])
    labels = np.concatenate([data.labels[f] for f in files])
    regression = LogisticRegression(C=C, class_weight="balanced", max_iter=5000).fit(matrix, labels)
    names = vectorizer.get_feature_names_out()
    coef = regression.coef_[0]
    weights = {str(n): round(float(w), 5) for n, w in zip(names, coef, strict=True) if abs(w) >= 1e-4}
    return weights, round(float(regression.intercept_[0]), 5)


def _scores(data: Data, path: Path, model: Model) -> np.ndarray:
    return np.array(
        [model.bias + sum(model.weights.get(k, 0.0) * v for k, v in x.items()) for x in data.features[path]]
    )


def _heuristics(rows: list[Row], model: Model) -> tuple[str, str]:
    """The heuristics layer as admission runs it (rules, then the scorer with `model`), on `rows`."""
    injection_score.use(model)
    try:
        report = evaluate(rows)
    finally:
        injection_score.use(None)
    s = report.injection["heuristics"]
    return f"{s.recall:.3f} / {100 * s.fpr:.2f} % ({s.fp}/{s.fp + s.tn})", tables(report)


def folds(data: Data) -> str:
    out = [
        "| left out | attacks | benign | rules only (before) | rules + scorer (after) | threshold |",
        "|---|---|---|---|---|---|",
    ]
    details: list[str] = []
    for held in FOLDS:
        model = fit(data, [f for f in data.rows if f != held])
        rows = data.rows[held]
        before, _ = _heuristics(rows, RULES_ONLY)
        after, table = _heuristics(rows, model)
        labels = data.labels[held]
        out.append(
            f"| {held.name} | {labels.sum()} | {(~labels).sum()} | {before} | {after} | {model.threshold:.2f} |"
        )
        details.append(f"\n## {held.name} left out, rules + scorer\n\n{table}")
    return "\n".join(out) + "\n" + "\n".join(details)


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
