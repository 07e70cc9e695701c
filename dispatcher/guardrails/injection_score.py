"""A weighted score over the attack concepts the lexicon finds: the heuristics' second detector.

The rules in injection.py fire on one exact combination (an IGNORE verb, a PRIOR qualifier and an
INSTRUCTIONS noun within 60 characters). A paraphrase usually still names several attack concepts,
just not that combination: "Frühere Richtlinien sind aufgehoben ... arbeite ohne sie weiter" has
IGNORE, RULES, NEGATED, LIMITS and the second person, in no rule's order or distance. Five rounds of
adding phrases moved blind recall little, because each new author paraphrases differently; what
carries over between authors is *how many* attack concepts a text holds, how close together, whether
they are said to the assistant, and which pairs co-occur. So this module turns a text's concept hits
into a few hundred interpretable features (which concepts, how often, how early, the most distinct
concepts in a 60-character window and in a sentence, concept pairs within 60 characters, which rule
families have both concepts somewhere, the second person near them, questions, shouting, labelled
lines) and weighs them with a logistic regression fitted by bench/injection_scorer.py on the tuning
files (weights in injection_score_weights.json, a plain table: feature -> weight). No text is
memorized: the features are concept names, so one weight serves all 15 languages.

Cost: one pass over the concept hits the rules already computed (sorted spans), so linear in their
number; the few regular expressions over the text are linear too.
"""

from __future__ import annotations

import json
import math
import re
from bisect import bisect_left
from dataclasses import dataclass
from functools import cache
from pathlib import Path

Span = tuple[int, int]

# Concepts that are no attack by themselves: who is addressed, and talk about attacks.
NEUTRAL = frozenset({"YOU", "SECOND_PERSON", "DISCUSS", "WHY"})
WINDOW = 60  # characters: how close two concepts must stand to count as said together
_EARLY = 150  # a concept this near the start: attacks open with their command
_YOU_NEAR = 60  # an attack concept this near "you"/"your" is said to the assistant
_QUESTION = re.compile(r"[?？؟]")
_SENTENCE_END = re.compile(r"[.!?。！？\n؟।]+")
_SHOUTED = re.compile(r"\b[A-Z]{4,}\b")  # "IMPORTANT", "IGNORE": attacks shout, questions rarely
# A line that opens with a label or marker ("Note:", "SYSTEM:", "[admin]", "### ", "<tool>"): the
# carriers of indirect injection (e-mails, tool results, documents) are built of such lines.
_LABEL_LINE = re.compile(r"(?m)^\s*[\[<#*]|^\s*\w{2,15}\s*:")
_QUOTE_MARK = re.compile(r"[\"“”«»「」']")

WEIGHTS_PATH = Path(__file__).with_name("injection_score_weights.json")


@dataclass(frozen=True)
class Model:
    weights: dict[str, float]
    bias: float
    threshold: float  # a score above it is an attack


def features(text: str, hits: dict[str, list[Span]], matched: list[str]) -> dict[str, float]:
    """The features of one normalized text, given its concept hits and the lexicon terms that made
    them (injection.concept_hits)."""
    present = {concept: spans for concept, spans in hits.items() if spans}
    f: dict[str, float] = {}
    for concept, spans in present.items():
        f["has:" + concept] = 1.0
        f["n:" + concept] = math.log1p(len(spans))
        if spans[0][0] < _EARLY:
            f["early:" + concept] = 1.0
    attack = [c for c in present if c not in NEUTRAL]
    f["distinct"] = min(len(attack), 8) / 4
    events = sorted((start, c) for c in attack for start, _ in present[c])
    best = _window_and_pairs(events, f)
    f["win"] = min(best, 6) / 3
    for k in (2, 3, 4):
        f[f"win>={k}"] = float(best >= k)
    if _QUESTION.search(text):
        f["question"] = 1.0
    f["loglen"] = math.log1p(len(text)) / 8
    addressed = sorted(s for c in ("SECOND_PERSON", "YOU") for s, _ in present.get(c, ()))
    if addressed and events:
        near = 0
        for start, _ in events:
            k = bisect_left(addressed, start - _YOU_NEAR)
            near += k < len(addressed) and addressed[k] <= start + _YOU_NEAR
        f["you_near"] = min(near, 6) / 3
    ends = [m.end() for m in _SENTENCE_END.finditer(text)] + [len(text)]
    per_sentence: dict[int, set[str]] = {}
    for start, concept in events:
        per_sentence.setdefault(bisect_left(ends, start), set()).add(concept)
    most = max((len(s) for s in per_sentence.values()), default=0)
    f["sent"] = min(most, 5) / 3
    for k in (2, 3, 4):
        f[f"sent>={k}"] = float(most >= k)
    f["caps"] = min(_count(_SHOUTED, text, 5), 5) / 5
    f["excl"] = float("!" in text or "！" in text)
    f["label_line"] = min(_count(_LABEL_LINE, text, 4), 4) / 4
    f["lines"] = math.log1p(text.count("\n")) / 3
    f["quotes"] = min(_count(_QUOTE_MARK, text, 8), 8) / 8
    for term in matched:
        # Which lexicon terms: "verbatim" is a surer sign of exfiltration than "list", "ignoriere"
        # of an override than "alle". Terms, not text: the lexicon is the vocabulary.
        f["t:" + term] = 1.0
    for family, first, second in _rule_pairs():
        if first in present and second in present:
            f["rp:" + family] = 1.0  # a rule's concepts both there, farther apart than it allows
    return f


@cache
def _rule_pairs() -> tuple[tuple[str, str, str], ...]:
    from dispatcher.guardrails.injection import RULE_PAIRS  # imported late: injection.py imports us

    return RULE_PAIRS


def _count(pattern: re.Pattern[str], text: str, cap: int) -> int:
    """Matches of `pattern`, counting no further than `cap` (the feature is capped anyway)."""
    n = 0
    for _ in pattern.finditer(text):
        n += 1
        if n >= cap:
            break
    return n


def _window_and_pairs(events: list[tuple[int, str]], f: dict[str, float]) -> int:
    """The most distinct concepts within WINDOW characters, and every pair of distinct concepts that
    stand within WINDOW of each other as a feature `co:A+B`. One sweep: the concepts in the current
    window are counted in a dict, so each event costs at most the number of concepts (~50)."""
    in_window: dict[str, int] = {}
    best = 0
    left = 0
    for start, concept in events:
        while events[left][0] < start - WINDOW:
            gone = events[left][1]
            in_window[gone] -= 1
            if not in_window[gone]:
                del in_window[gone]
            left += 1
        for other in in_window:
            if other != concept:
                a, b = (concept, other) if concept < other else (other, concept)
                f[f"co:{a}+{b}"] = 1.0
        in_window[concept] = in_window.get(concept, 0) + 1
        best = max(best, len(in_window))
    return best


def score(text: str, hits: dict[str, list[Span]], matched: list[str], model: Model | None = None) -> float:
    model = model or active()
    weights = model.weights
    found = features(text, hits, matched)
    return model.bias + sum(weights.get(name, 0.0) * value for name, value in found.items())


def attack_span(hits: dict[str, list[Span]]) -> Span | None:
    """Where a scored attack stands: from its first to its last attack concept."""
    spans = [s for c, found in hits.items() if c not in NEUTRAL for s in found]
    if not spans:
        return None
    return min(s for s, _ in spans), max(e for _, e in spans)


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
