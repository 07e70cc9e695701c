"""A trained prompt-injection classifier that needs only numpy: logistic regression over character
n-grams (1 to 3 characters inside word boundaries) and word unigrams and bigrams, each block TF-IDF
weighted and L2-normalized, of the normalized prompt and of its undisguised readings (decoded
base64, leetspeak...).

Why this model (issue 14; figures in docs/guardrails.md): character n-grams need no tokenizer or
language model, so one small linear model reads all 15 languages, and after the guardrails'
normalization obfuscation too. Trained on rounds one to three and scored on round four (a set
nobody here had tuned on), the character model caught 0.69 of that round's attacks at a 1.0 %
false-positive rate, where the MiniLM similarity classifier caught 0.21 at 1.9 %. Round five added
the word block: with every data file left out in turn, it ranked the left-out blind rounds' attacks
better (recall at 1 % false positives 0.86 -> 0.91 pooled) than the characters alone. Served like
any model (backend type `injection_ngrams`): a chat or completion request is answered "injection" or
"safe" (what dispatcher/admission/classifier.py asks).

The weights are `injection_ngrams.npz` beside this module (no pickle: arrays only), written by
`python bench/injection_ngrams.py --write` from the tuning set; the decision threshold in it was
calibrated on out-of-fold scores of the benign tuning prompts (leave one data file out). A weights
file without the word block (round four's) scores with the characters alone.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dispatcher.guardrails.injection import undisguised
from dispatcher.guardrails.normalize import normalize
from schemas.config import InjectionNgramBackend
from schemas.envelope import Endpoint
from workers.backends.backend_errors import BackendError
from workers.backends.base import Json
from workers.backends.classifier_reply import as_stream, prompt_of, verdict_body

WEIGHTS = Path(__file__).with_name("injection_ngrams.npz")
NGRAMS = (1, 3)
WORD_NGRAMS = (1, 2)
# scikit-learn's default token pattern would drop one-letter words ("a", Chinese single characters
# between punctuation); this one keeps them, and the trainer passes it to scikit-learn too.
TOKEN_PATTERN = r"(?u)\b\w+\b"
_TOKEN = re.compile(TOKEN_PATTERN)
# Beyond this many characters only the head and the tail are read: the score is a normalized
# average, and the n-gram count (the cost) grows with the text. 3 x 8,000 characters read take a few ms.
_MAX_CHARS = 24_000
_WHITE_SPACES = re.compile(r"\s\s+")
# A long text is scored in windows of WINDOW characters, each overlapping the next by half, and is an
# injection when one window is. Scored whole, a jailbreak's few commands drown in its story (the
# TF-IDF vector is L2-normalized over the whole text), and the model, trained mostly on prompts
# under 400 characters, would be judging a text unlike any it saw. Round seven found both: with
# long benign prose in training, whole-text scoring missed a third of the in-the-wild jailbreaks.
WINDOW = 400
_STEP = WINDOW // 2
_EDGE = 30  # how far a window's edge moves to fall between words


def features_text(text: str) -> str:
    """What the model reads: the normalized, lower-cased text, then its undisguised readings. The
    trainer (bench/injection_ngrams.py) calls this too, so training and serving cannot drift."""
    if len(text) > _MAX_CHARS:
        text = text[: _MAX_CHARS // 2] + "\n" + text[-_MAX_CHARS // 2 :]
    readings = " ".join(undisguised(text))
    plain = normalize(text).text.lower()
    return plain + ("\n" + readings.lower() if readings else "")


def windows(features: str) -> list[str]:
    """The stretches a text is scored in: itself when short, else overlapping windows whose edges
    fall on white space where one is near (a cut word would be n-grams no text has)."""
    if len(features) <= WINDOW:
        return [features]
    spans: list[str] = []
    start = 0
    while True:
        end = min(start + WINDOW, len(features))
        if end < len(features) and not features[end].isspace():
            space = features.rfind(" ", end - _EDGE, end)
            end = space if space > start else end
        spans.append(features[start:end])
        if end >= len(features):
            return spans
        start += _STEP
        if not features[start - 1].isspace():
            space = features.find(" ", start, start + _EDGE)
            start = space + 1 if space != -1 else start


def char_wb_ngrams(text: str, low: int = NGRAMS[0], high: int = NGRAMS[1]) -> list[str]:
    """scikit-learn's `char_wb` analyzer, exactly (its own test compares the two): n-grams inside
    each space-padded word; a word shorter than n counts once."""
    grams: list[str] = []
    for word in _WHITE_SPACES.sub(" ", text).split():
        padded = f" {word} "
        size = len(padded)
        for n in range(low, high + 1):
            if size <= n:
                grams.append(padded)
                break
            grams.extend(padded[i : i + n] for i in range(size - n + 1))
    return grams


def word_ngrams(text: str, low: int = WORD_NGRAMS[0], high: int = WORD_NGRAMS[1]) -> list[str]:
    """scikit-learn's `word` analyzer with TOKEN_PATTERN, exactly (its own test compares the two)."""
    tokens = _TOKEN.findall(text)
    grams: list[str] = []
    for n in range(low, high + 1):
        grams.extend(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return grams


class _Block:
    """One TF-IDF block of the model: its vocabulary, IDF and weights."""

    def __init__(self, grams: list[str], idf: np.ndarray, coef: np.ndarray) -> None:
        self._index = {g: i for i, g in enumerate(grams)}
        self._idf = idf.astype(np.float64)
        self._coef = coef.astype(np.float64)

    def value(self, grams: list[str]) -> float:
        """The block's share of the decision: sublinear tf x idf, L2-normalized, dot the weights."""
        counts = Counter(i for g in grams if (i := self._index.get(g)) is not None)
        if not counts:
            return 0.0
        idx = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        tf = np.fromiter((1.0 + math.log(c) for c in counts.values()), dtype=np.float64, count=len(counts))
        weights = tf * self._idf[idx]
        return float(weights @ self._coef[idx]) / float(np.sqrt(weights @ weights))


@dataclass(frozen=True, slots=True)
class Score:
    injection: bool
    score: float  # the model's decision value; >= threshold is an injection


class NgramModel:
    """The blocks (characters, and words when the file has them), the intercept and the calibrated
    threshold."""

    def __init__(self, path: Path = WEIGHTS, threshold: float | None = None) -> None:
        with np.load(path, allow_pickle=False) as data:
            self._chars = _Block([str(g) for g in data["ngrams"]], data["idf"], data["coef"])
            self._words = None
            if "words" in data:
                # One UTF-8 string, a word n-gram per line: a fixed-width unicode array of bigrams
                # would be mostly padding.
                words = bytes(data["words"]).decode("utf-8").split("\n")
                self._words = _Block(words, data["word_idf"], data["word_coef"])
            self._intercept = float(data["intercept"])
            self.threshold = float(data["threshold"]) if threshold is None else threshold

    def score(self, text: str) -> Score:
        value = max(self._value(window) for window in windows(features_text(text)))
        return Score(value >= self.threshold, value)

    def _value(self, features: str) -> float:
        value = self._chars.value(char_wb_ngrams(features)) + self._intercept
        if self._words is not None:
            value += self._words.value(word_ngrams(features))
        return value


class NgramClassifierBackend:
    native: frozenset[Endpoint] = frozenset()  # chat and completions only

    def __init__(self, config: InjectionNgramBackend, model: str) -> None:
        self._name = model
        path = Path(config.weights_path) if config.weights_path else WEIGHTS
        try:
            self._model = NgramModel(path, config.threshold)
        except (OSError, KeyError, ValueError) as exc:
            raise BackendError(f"classifier weights unreadable: {type(exc).__name__}", 503, False) from exc

    @property
    def description(self) -> str:
        return "injection_ngrams"

    async def complete(self, endpoint: Endpoint, payload: Json) -> Json:
        if endpoint not in (Endpoint.CHAT, Endpoint.COMPLETIONS):
            raise BackendError("this classifier answers chat and completion requests only", 400, False)
        text = prompt_of(endpoint, payload)
        # A few ms of CPU: a thread keeps the event loop (heartbeats, in-progress acks) responsive.
        verdict = await asyncio.to_thread(self._model.score, text)
        return verdict_body(endpoint, self._name, text, verdict.injection)

    async def stream(self, endpoint: Endpoint, payload: Json) -> Any:
        async for chunk in as_stream(await self.complete(endpoint, payload)):
            yield chunk

    async def aclose(self) -> None:
        return None
