"""Train the n-gram injection classifier (workers/backends/ngram_classifier.py) and measure how it
generalizes across data files: leave one round out, train on the others, score the one left out.

    python bench/injection_ngrams.py --folds         # leave each data file out in turn: the proxy
    python bench/injection_ngrams.py --cross-round   # round four's proxy: train on rounds 1-3, score round4
    python bench/injection_ngrams.py --write         # train on every data file, write the weights

Reproducible: scikit-learn's TfidfVectorizer (char_wb 1-3, min_df 2, sublinear tf; and words 1-2 with
the worker's token pattern, min_df 2, sublinear tf; each block L2-normalized) and LogisticRegression
(lbfgs, C = 16, balanced classes) are deterministic on the same data. The threshold is calibrated
without touching a scored file: every data file is scored by a model trained on the other files
(out of fold), and the threshold is the score that flags `TARGET_FPR` of those out-of-fold benign
prompts — for the shipped weights all files' out-of-fold benign scores, for a left-out file the
other files' (their models saw the left-out file, its scores did not set its threshold). The
leave-one-round-out figures on the rounds another author wrote blind (round2, round4, round5,
round6, round7, round8) are the proxy for a new blind set; they are tuning data all the same (docs/guardrails.md).
scikit-learn is needed here only (it is a test dependency); the worker reads the arrays with numpy.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.benign_corpus import corpus, digest
from bench.guardrails_eval import (
    LABELLED,
    ORIGINAL,
    ORIGINAL_HOLDOUT,
    ROUND2,
    ROUND3,
    ROUND3_PROBE,
    ROUND4,
    ROUND5,
    ROUND6,
    ROUND7,
    ROUND7_TRAIN,
    ROUND8,
    TUNING,
    Classify,
    Report,
    Row,
    _read,
    evaluate,
    split_of,
    tables,
)
from workers.backends.ngram_classifier import (
    NGRAMS,
    TOKEN_PATTERN,
    WEIGHTS,
    WORD_NGRAMS,
    features_text,
    windows,
)

C = 16.0  # round four's choice among 1, 4, 16 and 64; round five: 4 and 32 did not do better with words
MIN_DF = 2
# Round four chose 0.5 %, round five 1 %; the fifth blind set then found 1 % flagging 3.6 % of a new
# author's benign prompts. Round six, with that set trained on and left out in turn: at 1 % the
# n-grams flag 2.6 % of its benign prompts (both layers 3.0 %), at 0.5 % 0.5 % (both 1.0 %) for
# recall 0.85 -> 0.72; pooled over the four blind rounds, both layers 0.89 at 1.3 % -> 0.84 at
# 0.6 %. Between 0.5 % and 0.6 % a cluster of benign answer-format requests crosses the
# threshold (4 -> 13 of 808): docs/guardrails.md, Round six.
TARGET_FPR = 0.005
# Every labelled file trains the shipped model; the original regression sets are small but labelled.
# Since round six the fifth blind set (round6.jsonl, measured once) is tuning data and trains it too,
# since round seven the sixth (round7.jsonl) and the seventh (round8.jsonl).
# Round seven's long benign documents train every fit but are no fold: texts of a genre the other
# files lack score high out of fold, and as a fold they set the threshold alone (5.5 instead of 1.7,
# half the blind rounds' recall gone) — they are there so that the model learns the genre.
TRAIN_ONLY = (ROUND7_TRAIN,)
DATA_FILES = (*(f for f in TUNING if f not in TRAIN_ONLY), ORIGINAL, ORIGINAL_HOLDOUT)
# The rounds written blind by someone who never saw the detectors: the honest folds.
BLIND_ROUNDS = (ROUND2, ROUND4, ROUND5, ROUND6, ROUND7, ROUND8)

# Round seven: long benign text (TRAIN_ONLY and bench/benign_corpus.py) trains every fit;
# `--no-corpus` turns it off to compare.
LONG_BENIGN = True

Model = tuple[object, object, object]  # character vectorizer, word vectorizer, logistic regression


def _files(files: tuple[Path, ...]) -> list[tuple[Path, list[Row]]]:
    """Each file's rows, without the held-out set's texts wherever they appear."""
    return [(f, [r for r in _read(f) if split_of(str(r["text"])) == "tuning"]) for f in files if f.exists()]


def _matrix(chars: object, words: object, texts: list[str], fit: bool = False) -> object:
    from scipy.sparse import hstack

    how = "fit_transform" if fit else "transform"
    return hstack([getattr(chars, how)(texts), getattr(words, how)(texts)]).tocsr()


@functools.cache
def long_benign_texts() -> tuple[str, ...]:
    """Long benign text for every fit (this model's and the concept scorer's): bench/benign_corpus.py's
    passages and the TRAIN_ONLY files' texts."""
    passages = corpus()
    print(f"benign corpus: {len(passages)} passages, sha256 {digest(passages)}", file=sys.stderr)
    return (*passages, *(str(r["text"]) for _, rows in _files(TRAIN_ONLY) for r in rows))


@functools.cache
def _long_benign() -> tuple[str, ...]:
    """long_benign_texts(), normalized as the worker reads them."""
    return tuple(features_text(text) for text in long_benign_texts())


def _fit(texts: list[str], labels: np.ndarray) -> Model:
    """A model on `texts` (features) cut into the worker's windows, each window with its text's
    label. Every fit also learns from long benign text (`_long_benign`), which the labelled sets lack
    (their benign prompts are short); it trains and is never scored."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    extra = list(_long_benign()) if LONG_BENIGN else []
    texts, labels = texts + extra, np.concatenate([labels, np.zeros(len(extra), dtype=bool)])
    cut = [windows(text) for text in texts]
    texts = [window for parts in cut for window in parts]
    labels = np.repeat(labels, [len(parts) for parts in cut])
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=NGRAMS, min_df=MIN_DF, sublinear_tf=True)
    words = TfidfVectorizer(
        analyzer="word",
        ngram_range=WORD_NGRAMS,
        token_pattern=TOKEN_PATTERN,
        min_df=MIN_DF,
        sublinear_tf=True,
    )
    matrix = _matrix(chars, words, texts, fit=True)
    model = LogisticRegression(C=C, class_weight="balanced", max_iter=5000).fit(matrix, labels)
    return chars, words, model


def _scores(model: Model, texts: list[str]) -> np.ndarray:
    """Each text's score as the worker computes it: its highest-scoring window."""
    chars, words, regression = model
    cut = [windows(text) for text in texts]
    values = regression.decision_function(_matrix(chars, words, [w for parts in cut for w in parts]))  # type: ignore[attr-defined]
    starts = np.cumsum([0] + [len(parts) for parts in cut[:-1]])
    return np.maximum.reduceat(values, starts)  # type: ignore[no-any-return]


def _data(files: tuple[Path, ...]) -> list[tuple[Path, list[Row], list[str], np.ndarray]]:
    return [
        (
            f,
            rows,
            [features_text(str(r["text"])) for r in rows],
            np.array(["injection" in r["labels"] for r in rows]),  # type: ignore[operator]
        )
        for f, rows in _files(files)
    ]


def out_of_fold(files: tuple[Path, ...]) -> dict[Path, np.ndarray]:
    """Each file's scores from a model trained on the other files."""
    data = _data(files)
    scores: dict[Path, np.ndarray] = {}
    for held, _, texts, _ in data:
        rest = [d for d in data if d[0] != held]
        model = _fit([t for d in rest for t in d[2]], np.concatenate([d[3] for d in rest]))
        scores[held] = _scores(model, texts)
    return scores


def _threshold(benign: list[np.ndarray]) -> float:
    return float(np.quantile(np.concatenate(benign), 1 - TARGET_FPR))


def train(files: tuple[Path, ...]) -> tuple[Model, float]:
    """A model on `files` and its threshold from out-of-fold scores (leave one file out)."""
    data = _data(files)
    oof = out_of_fold(files)
    threshold = _threshold([oof[f][~labels] for f, _, _, labels in data])
    model = _fit([t for d in data for t in d[2]], np.concatenate([d[3] for d in data]))
    return model, threshold


def folds(files: tuple[Path, ...] = DATA_FILES) -> str:
    """Leave one round out: per file the classifier trained on the others at a threshold from the
    others' out-of-fold benign scores, the heuristics, and both; then the blind rounds pooled."""
    data = _data(files)
    oof = out_of_fold(files)
    lines = ["| left out | attacks | benign | heuristics | n-grams | both | n-grams at 1 % of its own benign |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    pooled: list[Row] = []
    verdicts: dict[str, bool] = {}
    for path, rows, _, labels in data:
        threshold = _threshold([oof[f][~y] for f, _, _, y in data if f != path])
        flagged = oof[path] >= threshold
        report = evaluate(rows, _lookup(rows, flagged))
        oracle = np.quantile(oof[path][~labels], 0.99) if (~labels).any() else np.inf
        best = float((oof[path][labels] > oracle).mean()) if labels.any() else 0.0
        cells = [_cell(report, layer) for layer in ("heuristics", "classifier", "combined")]
        lines.append(
            f"| {path.name} | {labels.sum()} | {(~labels).sum()} | " + " | ".join(cells) + f" | {best:.2f} |"
        )
        if path in BLIND_ROUNDS:
            pooled.extend(rows)
            verdicts.update(zip((str(r["text"]) for r in rows), flagged.tolist(), strict=True))
    blind = evaluate(pooled, lambda text, _leave_out: verdicts[text])
    names = ", ".join(f.name for f in BLIND_ROUNDS)
    return (
        "\n".join(lines) + f"\n\nThe blind rounds ({names}) pooled, each scored left out:\n\n" + tables(blind)
    )


def _lookup(rows: list[Row], flagged: np.ndarray) -> Classify:
    """The classifier layer for `evaluate`: verdicts computed beforehand, looked up by text."""
    verdicts = dict(zip((str(r["text"]) for r in rows), flagged.tolist(), strict=True))
    return lambda text, _leave_out: bool(verdicts[text])


def _cell(report: Report, layer: str) -> str:
    score = report.injection[layer]
    return f"{score.recall:.2f} / {100 * score.fpr:.1f} %"


def cross_round(train_files: tuple[Path, ...], scored: Path) -> str:
    """Heuristics, the classifier trained without `scored`, and both, on `scored`'s prompts."""
    model, threshold = train(train_files)
    rows = _read(scored)
    flagged = _scores(model, [features_text(str(r["text"])) for r in rows]) >= threshold
    report = evaluate(rows, _lookup(rows, flagged))
    names = ", ".join(f.name for f in train_files)
    return f"trained on {names}; threshold {threshold:.3f}; scored {scored.name}\n\n" + tables(report)


def write(path: Path = WEIGHTS) -> str:
    (chars, words, regression), threshold = train(DATA_FILES)
    char_vocabulary: dict[str, int] = chars.vocabulary_  # type: ignore[attr-defined]
    word_vocabulary: dict[str, int] = words.vocabulary_  # type: ignore[attr-defined]
    ngrams = sorted(char_vocabulary, key=char_vocabulary.__getitem__)
    word_grams = sorted(word_vocabulary, key=word_vocabulary.__getitem__)
    coef = regression.coef_[0]  # type: ignore[attr-defined]
    np.savez_compressed(
        path,
        ngrams=np.array(ngrams, dtype=str),
        idf=chars.idf_.astype(np.float32),  # type: ignore[attr-defined]
        # Weights in half precision: the file stays under 1 MB with the round-seven vocabulary, and
        # a decision moves by about 1e-3 (the threshold's neighbourhood is wider than that).
        coef=coef[: len(ngrams)].astype(np.float16),
        words=np.frombuffer("\n".join(word_grams).encode("utf-8"), dtype=np.uint8),
        word_idf=words.idf_.astype(np.float32),  # type: ignore[attr-defined]
        word_coef=coef[len(ngrams) :].astype(np.float16),
        intercept=np.float32(regression.intercept_[0]),  # type: ignore[attr-defined]
        threshold=np.float32(threshold),
    )
    return f"{len(ngrams)} character and {len(word_grams)} word n-grams, threshold {threshold:.3f}, written to {path}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", action="store_true", help="leave each data file out in turn")
    parser.add_argument("--cross-round", action="store_true", help="train on rounds 1-3, score round4")
    parser.add_argument("--write", action="store_true", help="train on every data file, write weights")
    parser.add_argument("--no-corpus", action="store_true", help="train without the long benign text")
    args = parser.parse_args()
    global LONG_BENIGN
    LONG_BENIGN = not args.no_corpus
    if args.write:
        print(write())
    if args.folds:
        print(folds())
    if args.cross_round:
        print(cross_round((LABELLED, ROUND2, ROUND3, ROUND3_PROBE), ROUND4))


if __name__ == "__main__":
    main()
