"""Train the character n-gram injection classifier (workers/backends/ngram_classifier.py) and measure
how it generalizes across data files: train on some rounds, score a round it never saw.

    python bench/injection_ngrams.py --cross-round   # train on rounds 1-3, score round4.jsonl: the proxy
    python bench/injection_ngrams.py --folds         # leave one data file out, every file in turn
    python bench/injection_ngrams.py --write         # train on the whole tuning set, write the weights

Reproducible: scikit-learn's TfidfVectorizer (char_wb, 1-3, min_df 2, sublinear tf) and
LogisticRegression (liblinear-free lbfgs, C = 16, balanced classes) are deterministic on the same
data. The threshold is calibrated without touching the scored file: each training file is scored by a
model trained on the other training files (out of fold), and the threshold is the score that flags
`TARGET_FPR` of those out-of-fold benign prompts. scikit-learn is needed here only (it is a test
dependency); the worker reads the written arrays with numpy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.guardrails_eval import ROUND4, TUNING, Row, _read, evaluate, split_of, tables
from workers.backends.ngram_classifier import NGRAMS, WEIGHTS, features_text

C = 16.0  # chosen on the round4 proxy among 1, 4, 16 and 64 (docs/guardrails.md): 4 to 64 differ little
MIN_DF = 2
# 0.5 %, not 1 %: on round four the out-of-fold 1 % threshold flagged 2.8 % of new benign prompts,
# the 0.5 % one 1.0 % (a new author's benign text scores higher than the folds' own).
TARGET_FPR = 0.005


def _files(files: tuple[Path, ...]) -> list[tuple[Path, list[Row]]]:
    return [(f, [r for r in _read(f) if split_of(str(r["text"])) == "tuning"]) for f in files if f.exists()]


def _fit(texts: list[str], labels: np.ndarray) -> tuple[object, object]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=NGRAMS, min_df=MIN_DF, sublinear_tf=True)
    matrix = vectorizer.fit_transform(texts)
    model = LogisticRegression(C=C, class_weight="balanced", max_iter=5000).fit(matrix, labels)
    return vectorizer, model


def _scores(vectorizer: object, model: object, texts: list[str]) -> np.ndarray:
    return model.decision_function(vectorizer.transform(texts))  # type: ignore[attr-defined,no-any-return]


def train(files: tuple[Path, ...]) -> tuple[object, object, float]:
    """A model on `files` and its threshold from out-of-fold scores (leave one file out)."""
    data = _files(files)
    texts = [[features_text(str(r["text"])) for r in rows] for _, rows in data]
    labels = [np.array(["injection" in r["labels"] for r in rows]) for _, rows in data]  # type: ignore[operator]
    benign_oof: list[np.ndarray] = []
    for held in range(len(data)):
        rest = [i for i in range(len(data)) if i != held]
        vectorizer, model = _fit(
            [t for i in rest for t in texts[i]], np.concatenate([labels[i] for i in rest])
        )
        scores = _scores(vectorizer, model, texts[held])
        benign_oof.append(scores[~labels[held]])
    threshold = float(np.quantile(np.concatenate(benign_oof), 1 - TARGET_FPR))
    vectorizer, model = _fit([t for ts in texts for t in ts], np.concatenate(labels))
    return vectorizer, model, threshold


def classify_with(vectorizer: object, model: object, threshold: float):  # type: ignore[no-untyped-def]
    def classify(text: str, _leave_out: bool) -> bool:
        return bool(_scores(vectorizer, model, [features_text(text)])[0] >= threshold)

    return classify


def cross_round(train_files: tuple[Path, ...], scored: Path) -> str:
    """Heuristics, the classifier trained without `scored`, and both, on `scored`'s prompts."""
    vectorizer, model, threshold = train(train_files)
    rows = _read(scored)
    report = evaluate(rows, classify_with(vectorizer, model, threshold))
    names = ", ".join(f.name for f in train_files)
    return f"trained on {names}; threshold {threshold:.3f}; scored {scored.name}\n\n" + tables(report)


def write(path: Path = WEIGHTS) -> str:
    vectorizer, model, threshold = train(TUNING)
    vocabulary: dict[str, int] = vectorizer.vocabulary_  # type: ignore[attr-defined]
    ngrams = sorted(vocabulary, key=vocabulary.__getitem__)
    np.savez_compressed(
        path,
        ngrams=np.array(ngrams, dtype=str),
        idf=vectorizer.idf_.astype(np.float32),  # type: ignore[attr-defined]
        coef=model.coef_[0].astype(np.float32),  # type: ignore[attr-defined]
        intercept=np.float32(model.intercept_[0]),  # type: ignore[attr-defined]
        threshold=np.float32(threshold),
    )
    return f"{len(ngrams)} n-grams, threshold {threshold:.3f}, written to {path}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cross-round", action="store_true", help="train on rounds 1-3, score round4")
    parser.add_argument("--folds", action="store_true", help="leave each data file out in turn")
    parser.add_argument("--write", action="store_true", help="train on every tuning file, write weights")
    args = parser.parse_args()
    if args.write:
        print(write())
    if args.cross_round:
        print(cross_round(tuple(f for f in TUNING if f != ROUND4), ROUND4))
    if args.folds:
        for held in TUNING:
            print(cross_round(tuple(f for f in TUNING if f != held), held) + "\n")


if __name__ == "__main__":
    main()
