"""A weighted score over the attack concepts the lexicon finds: the heuristics' second detector.

The rules in injection.py fire on one exact combination (an IGNORE verb, a PRIOR qualifier and an
INSTRUCTIONS noun within 60 characters). A paraphrase usually still names several attack concepts,
just not that combination: "Frühere Richtlinien sind aufgehoben ... arbeite ohne sie weiter" has
IGNORE, RULES, NEGATED, LIMITS and the second person, in no rule's order or distance. Five rounds of
adding phrases moved blind recall little, because each new author paraphrases differently; what
carries over between authors is *which* attack concepts a text holds, how close together, whether
they are said to the assistant, which pairs co-occur, and which of the lexicon's terms made them. So
this module turns a text's concept hits into interpretable features (which concepts, how early, the
most distinct concepts in a 60-character window and in a sentence, concept pairs within 60
characters, which rule families have both concepts somewhere, the second person near them, the
lexicon terms found, questions, shouting, labelled lines) and weighs them with a logistic regression
fitted by bench/injection_scorer.py on the tuning files (weights in injection_score_weights.json, a
plain table: feature -> weight). The weights are over concept and lexicon-term names, not text.

Nothing grows with repetition: a concept counts once (how *often* it stands was a feature at first,
and two copies of one benign sentence then scored as an attack), and the few counted marks are
capped. The weights were fitted on prompts of a few hundred characters (99 % under 400), so a long
text is scored in windows of SEGMENT characters, each overlapping the next by half, and an attack is
a window that scores above the threshold.

Cost: one pass over the concept hits the rules already computed (sorted spans), in the windows that
hold an attack concept; each character is in at most two windows, so linear in the text. Building a
window's features costs about 60 µs, so a window is first bounded (injection_score_bound.py: the
cheap parts of its score exact, the swept ones at their most) and skipped when even the bound is
under the threshold: on benign text dense with attack words the scorer then costs about a seventh
of what it did.
"""

from __future__ import annotations

import json
import math
import re
from bisect import bisect_left
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path

from dispatcher.guardrails.injection_score_bound import MARGIN, Weights, concept_sweep, swept, window_parts

Span = tuple[int, int]

# Concepts that are no attack by themselves: who is addressed, and talk about attacks.
NEUTRAL = frozenset({"YOU", "SECOND_PERSON", "DISCUSS", "WHY"})
WINDOW = 60  # characters: how close two concepts must stand to count as said together
SEGMENT = 500  # the longest stretch scored whole (the fitting prompts: 99 % under 400 characters)
_STEP = SEGMENT // 2  # windows overlap by half, so an attack across a boundary is inside one
_EARLY = 150  # a concept this near the start: attacks open with their command
_YOU_NEAR = 60  # an attack concept this near "you"/"your" is said to the assistant
_SENTENCE_END = re.compile(r"[.!?。！？\n؟।]+")
# Marks counted per window: where each stands is found once per text.
_MARKS = {
    "question": re.compile(r"[?？؟]"),
    "shouted": re.compile(r"\b[A-Z]{4,}\b"),  # "IMPORTANT", "IGNORE": attacks shout, questions rarely
    # A line opening with a label or marker ("Note:", "SYSTEM:", "[admin]", "### ", "<tool>"): the
    # carriers of indirect injection (e-mails, tool results, documents) are built of such lines.
    "label_line": re.compile(r"(?m)^\s*[\[<#*]|^\s*\w{2,15}\s*:"),
    "quote": re.compile(r"[\"“”«»「」']"),
    "exclamation": re.compile(r"[!！]"),
    "newline": re.compile(r"\n"),
}

WEIGHTS_PATH = Path(__file__).with_name("injection_score_weights.json")


@dataclass(frozen=True)
class Model:
    weights: dict[str, float]
    bias: float
    threshold: float  # a score above it is an attack


class _Found:
    """What one text holds, found once (concept events, terms, marks), so that each window of it is
    read by bisection rather than by scanning it again."""

    def __init__(self, text: str, hits: dict[str, list[Span]], matched: list[tuple[int, str]]) -> None:
        self.text = text
        self.events = sorted((s, e, c) for c, spans in hits.items() for s, e in spans)
        self.starts = [s for s, _, _ in self.events]
        self.terms = sorted(matched)  # the scripts' patterns ran one after another
        self.term_starts = [s for s, _ in self.terms]

    @cached_property
    def marks(self) -> dict[str, list[int]]:
        # Found only once a window holds an attack concept: most prompts hold none (0.07 ms saved
        # on 2,000 characters of clean text).
        return {name: [m.start() for m in pattern.finditer(self.text)] for name, pattern in _MARKS.items()}

    @cached_property
    def sentence_ends(self) -> list[int]:
        return [m.end() for m in _SENTENCE_END.finditer(self.text)]

    def count(self, mark: str, a: int, b: int) -> int:
        positions = self.marks[mark]
        return bisect_left(positions, b) - bisect_left(positions, a)

    def features(self, a: int, b: int) -> dict[str, float] | None:
        """The features of text[a:b]; None when it holds no attack concept (nothing to score)."""
        events = self.events[bisect_left(self.starts, a) : bisect_left(self.starts, b)]
        attack = [(s, c) for s, _, c in events if c not in NEUTRAL]
        if not attack:
            return None
        f: dict[str, float] = {}
        counts: dict[str, int] = {}
        for s, _, c in events:
            if c not in counts:
                counts[c] = 0
                if s - a < _EARLY:
                    f["early:" + c] = 1.0
            counts[c] += 1
        for c in counts:
            f["has:" + c] = 1.0
        concepts = {c for _, c in attack}
        f["distinct"] = min(len(concepts), 8) / 4
        best = _window_and_pairs(attack, f)
        f["win"] = min(best, 6) / 3
        for k in (2, 3, 4):
            f[f"win>={k}"] = float(best >= k)
        if self.count("question", a, b):
            f["question"] = 1.0
        addressed = [s for s, _, c in events if c in ("SECOND_PERSON", "YOU")]
        if addressed:
            near = 0
            for start, _ in attack:
                k = bisect_left(addressed, start - _YOU_NEAR)
                near += k < len(addressed) and addressed[k] <= start + _YOU_NEAR
            f["you_near"] = min(near, 6) / 3
        per_sentence: dict[int, set[str]] = {}
        for start, concept in attack:
            per_sentence.setdefault(bisect_left(self.sentence_ends, start), set()).add(concept)
        most = max(len(s) for s in per_sentence.values())
        f["sent"] = min(most, 5) / 3
        for k in (2, 3, 4):
            f[f"sent>={k}"] = float(most >= k)
        f["caps"] = min(self.count("shouted", a, b), 5) / 5
        f["excl"] = float(self.count("exclamation", a, b) > 0)
        f["label_line"] = min(self.count("label_line", a, b), 4) / 4
        f["lines"] = math.log1p(min(self.count("newline", a, b), 15)) / 3
        f["quotes"] = min(self.count("quote", a, b), 8) / 8
        for _, term in self.terms[bisect_left(self.term_starts, a) : bisect_left(self.term_starts, b)]:
            # Which lexicon terms: "verbatim" is a surer sign of exfiltration than "list", "ignoriere"
            # of an override than "alle". Terms, not text: the lexicon is the vocabulary.
            f["t:" + term] = 1.0
        for family, first, second in _rule_pairs():
            if first in counts and second in counts:
                f["rp:" + family] = 1.0  # a rule's concepts both there, farther apart than it allows
        return f

    def attack_span(self, a: int, b: int) -> Span:
        spans = [(s, e) for s, e, c in self.events[bisect_left(self.starts, a) : bisect_left(self.starts, b)]]
        return min(s for s, _ in spans), max(e for _, e in spans)


def features(text: str, hits: dict[str, list[Span]], matched: list[tuple[int, str]]) -> dict[str, float]:
    """The features of a whole normalized text (for fitting: the prompts are shorter than SEGMENT),
    given its concept hits and the lexicon terms that made them (injection.concept_hits)."""
    return _Found(text, hits, matched).features(0, len(text)) or {}


@cache
def _rule_pairs() -> tuple[tuple[str, str, str], ...]:
    from dispatcher.guardrails.injection import RULE_PAIRS  # imported late: injection.py imports us

    return RULE_PAIRS


def _window_and_pairs(events: list[tuple[int, str]], f: dict[str, float]) -> int:
    """The most distinct concepts within WINDOW characters; every pair of distinct concepts that
    stand within WINDOW of each other becomes a feature `co:A+B`."""
    best, pairs = concept_sweep(events, WINDOW)
    for a, b in pairs:  # names made once per pair, not once per neighbouring event
        f[f"co:{a}+{b}"] = 1.0
    return best


def score(found: dict[str, float], model: Model) -> float:
    weights = model.weights
    return model.bias + sum(weights.get(name, 0.0) * value for name, value in found.items())


def attacks(text: str, hits: dict[str, list[Span]], matched: list[tuple[int, str]]) -> list[Span]:
    """The windows of `text` that score as attacks, each as the stretch from its first to its last
    concept. A window without an attack concept is not scored: there is nothing to find."""
    if not any(spans for concept, spans in hits.items() if concept not in NEUTRAL):
        return []
    model = active()
    table = _table(model)
    windows = _windows(len(text))
    parts = window_parts(text, hits, matched, windows, table, NEUTRAL, _MARKS, _EARLY)
    found: _Found | None = None
    spans: list[Span] = []
    for (a, b), (known, most) in zip(windows, parts, strict=True):
        if known + most < model.threshold - MARGIN:
            continue  # provably not above the threshold (injection_score_bound.py): not scored
        found = found or _Found(text, hits, matched)
        value = known + swept(found.events, found.starts, found.sentence_ends, a, b, table, NEUTRAL)
        if abs(value - model.threshold) < MARGIN:
            # Summed in another order than `score`: this close, the feature table decides.
            value = score(found.features(a, b) or {}, model)
        if value > model.threshold:
            spans.append(found.attack_span(a, b))
    return spans


_tables: tuple[Model, Weights] | None = None


def _table(model: Model) -> Weights:
    """The model's weights arranged for the bound, built once per model (Model holds a dict, so it
    is no dictionary key: the last one is kept by identity)."""
    global _tables
    if _tables is None or _tables[0] is not model:
        _tables = (model, Weights(model.weights, model.bias, _rule_pairs(), WINDOW, _YOU_NEAR))
    return _tables[1]


def window_features(
    text: str, hits: dict[str, list[Span]], matched: list[tuple[int, str]]
) -> list[dict[str, float]]:
    """The features of each window of a normalized text that `attacks` would score: for fitting
    on long benign documents, which are scored window by window too."""
    found = _Found(text, hits, matched)
    return [f for a, b in _windows(len(text)) if (f := found.features(a, b)) is not None]


def _windows(length: int) -> list[Span]:
    starts = range(0, max(1, length - _STEP), _STEP) if length > SEGMENT else (0,)
    return [(a, min(length, a + SEGMENT)) for a in starts]


_override: Model | None = None


def use(model: Model | None) -> None:
    """Score with `model` instead of the shipped weights (None: back to them). For the fitting bench,
    which scores each left-out round with weights fitted without it."""
    global _override
    _override = model


def active() -> Model:
    return _override or shipped()


@cache
def shipped() -> Model:
    """The weights bench/injection_scorer.py --write fitted on every tuning file."""
    data = json.loads(WEIGHTS_PATH.read_text(encoding="utf-8"))
    return Model(
        {str(k): float(v) for k, v in data["weights"].items()}, float(data["bias"]), float(data["threshold"])
    )
