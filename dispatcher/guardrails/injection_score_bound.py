"""An upper bound on each window's score in injection_score.py, cheap enough to skip the windows that
cannot score as an attack before their features are built.

Building a window's features (injection_score._Found.features) costs about 60 µs in Python: text
dense with attack words (benign documentation, lists of rules) pays it in every window. Most of a
window's score is cheap to know exactly from per-concept start lists and counts (which concepts,
which early, how many distinct, which rule pairs, which lexicon terms, the marks). What is dear is
the sweeps (concept pairs within 60 characters, the most concepts in 60 characters or in a sentence,
attack concepts near "you"). For those this module takes the largest value each feature's weight can
add given what is known (a pair weight counts only if positive, and only for pairs of the window's
attack concepts; `win` lies between 1/3 and the distinct count over 3, and so on). A window whose
bound is below the threshold by more than `MARGIN` provably scores below it: the decision is the
same as scoring it, and injection_score.attacks skips it. A window whose bound is higher gets its
exact score as the exact parts plus `swept` (the same sweeps as injection_score._Found, summed
without building the feature table); within `MARGIN` of the threshold the feature table decides, so
a different order of float additions cannot flip a decision.
tests/unit/dispatcher/guardrails/test_round7_bound.py checks, in every window of every tuning
prompt and of generated texts, that this score equals the feature table's and the bound is at
least it.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from itertools import combinations

Span = tuple[int, int]

# The exact score's float sum and this bound's are added in different orders: a window counts as
# provably below the threshold only when its bound is this far under it (rounding is ~1e-13).
MARGIN = 1e-6
_YOU = frozenset({"SECOND_PERSON", "YOU"})
# The marks of injection_score._MARKS that are one character each: counted with str.count, which is
# exact for a one-character class and needs no regular-expression scan.
_CHARS = {
    "question": "?？؟",
    "exclamation": "!！",
    "quote": "\"“”«»「」'",
}
# injection_score._MARKS["shouted"], r"\b[A-Z]{4,}\b", rewritten to open with a character class, so
# that the regular-expression engine skips ahead to capitals instead of trying every position (a
# third of the time). The same matches: a maximal run of four or more capitals, no word character
# before it (the lookbehind, read after its first capital) or after it. Checked on every tuning
# prompt and on generated texts (test_round7_bound.py).
SHOUTED = re.compile(r"[A-Z](?<!\w[A-Z])[A-Z]{3,}(?!\w)")


class Weights:
    """One model's weights arranged for the bound (built once per model)."""

    def __init__(
        self,
        weights: dict[str, float],
        bias: float,
        rule_pairs: tuple[tuple[str, str, str], ...],
        window: int,
        you_near: int,
    ) -> None:
        self.weights = weights
        self.bias = bias
        self.rule_pairs = rule_pairs
        self.window = window  # injection_score.WINDOW and _YOU_NEAR, passed in: it imports this module
        self.you_near = you_near
        self.co_pair: dict[tuple[str, str], float] = {}  # (a, b), a < b -> weight of co:a+b
        self.terms: dict[str, float] = {}  # lexicon term -> weight, filled as terms are met
        self.co: dict[tuple[tuple[str, ...], bool], float] = {}  # see swept_most

    def get(self, name: str) -> float:
        return self.weights.get(name, 0.0)

    def most(self, name: str, low: float, high: float) -> float:
        """The most a feature with values in [low, high] adds to the score."""
        w = self.get(name)
        return w * high if w > 0 else w * low

    def term(self, term: str) -> float:
        w = self.terms.get(term)
        if w is None:
            w = self.terms[term] = self.get("t:" + term)
        return w

    def pair(self, pair: tuple[str, str]) -> float:
        w = self.co_pair.get(pair)
        if w is None:
            if len(self.co_pair) > 65536:
                self.co_pair.clear()
            w = self.co_pair[pair] = self.get(f"co:{pair[0]}+{pair[1]}")
        return w

    def swept_most(self, attack: tuple[str, ...], addressed: bool) -> float:
        """The most the swept features of a window with these attack concepts (sorted) can add:
        every pair's positive weight (which pairs stand within 60 characters is what the bound does
        not know), `win` and `sent` between 1/3 and the distinct count over 3, the `>=k` flags only
        if that many concepts are there, `you_near` up to 2 if the window says "you"."""
        key = (attack, addressed)
        bound = self.co.get(key)
        if bound is None:
            if len(self.co) > 4096:  # distinct concept sets are few per text; keep the table small
                self.co.clear()
            n = len(attack)
            bound = sum(max(0.0, self.get(f"co:{p}+{q}")) for p, q in combinations(attack, 2))
            bound += self.most("win", 1 / 3, min(n, 6) / 3) + self.most("sent", 1 / 3, min(n, 5) / 3)
            for k in (2, 3, 4):
                bound += self.most(f"win>={k}", 0.0, float(n >= k)) + self.most(
                    f"sent>={k}", 0.0, float(n >= k)
                )
            if addressed:
                bound += self.most("you_near", 0.0, 2.0)
            self.co[key] = bound
        return bound


def window_parts(
    text: str,
    hits: dict[str, list[Span]],
    matched: list[tuple[int, str]],
    windows: list[Span],
    table: Weights,
    neutral: frozenset[str],
    marks: dict[str, re.Pattern[str]],
    early: int,
) -> list[tuple[float, float]]:
    """For each window, the score without the swept features (exact) and the most the swept features
    can add: their sum is at least the window's score. (-inf, 0.0) when the window holds no attack
    concept, which the exact scorer does not score either."""
    concepts = []
    for c in sorted(hits):  # sorted: the attack tuple below is then the memo's key as it stands
        if hits[c]:
            starts = sorted(s for s, _ in hits[c])
            concepts.append((c, starts, c not in neutral, table.get("has:" + c), table.get("early:" + c)))
    present_rules = [(f, s, fam) for fam, f, s in table.rule_pairs if f in hits and s in hits]
    terms = sorted(matched)
    term_starts = [s for s, _ in terms]
    names = [t for _, t in terms]
    questions, exclamations, quotes = ([ch for ch in group if ch in text] for group in _CHARS.values())
    newlines = "\n" in text
    shouted = _positions(text, SHOUTED)
    labels = _label_positions(text, marks["label_line"])
    w_question, w_excl = table.get("question"), table.get("excl")
    w_caps, w_label, w_lines, w_quotes = (
        table.get("caps"),
        table.get("label_line"),
        table.get("lines"),
        table.get("quotes"),
    )
    w_distinct = table.get("distinct")
    found: list[tuple[float, float]] = []
    for a, b in windows:
        score = table.bias
        present: set[str] = set()
        attack: list[str] = []
        for c, starts, is_attack, w_has, w_early in concepts:
            i = bisect_left(starts, a)
            if i < len(starts) and starts[i] < b:
                present.add(c)
                score += w_has
                if starts[i] - a < early:
                    score += w_early
                if is_attack:
                    attack.append(c)
        if not attack:
            found.append((-math.inf, 0.0))
            continue
        n = len(attack)
        score += w_distinct * (min(n, 8) / 4)
        score += sum(
            table.get("rp:" + fam)
            for fam in {fam for f, s, fam in present_rules if f in present and s in present}
        )
        most = table.swept_most(tuple(attack), not present.isdisjoint(_YOU))
        # The marks, exactly as injection_score counts them.
        if questions and sum(text.count(ch, a, b) for ch in questions):
            score += w_question
        if shouted:
            score += w_caps * (min(bisect_left(shouted, b) - bisect_left(shouted, a), 5) / 5)
        if exclamations and sum(text.count(ch, a, b) for ch in exclamations):
            score += w_excl
        if labels:
            score += w_label * (min(bisect_left(labels, b) - bisect_left(labels, a), 4) / 4)
        if newlines:
            score += w_lines * (math.log1p(min(text.count("\n", a, b), 15)) / 3)
        if quotes:
            score += w_quotes * (min(sum(text.count(ch, a, b) for ch in quotes), 8) / 8)
        score += sum(map(table.term, set(names[bisect_left(term_starts, a) : bisect_left(term_starts, b)])))
        found.append((score, most))
    return found


def swept(
    events: list[tuple[int, int, str]],
    starts: list[int],
    sentence_ends: list[int],
    a: int,
    b: int,
    table: Weights,
    neutral: frozenset[str],
) -> float:
    """What the swept features of text[a:b] add to its score, exactly as injection_score._Found
    computes them (concept pairs and the most concepts within `WINDOW`, attack concepts near the
    second person, the most concepts in a sentence), summed without naming each feature."""
    attack: list[tuple[int, str]] = []
    addressed: list[int] = []
    for s, _, c in events[bisect_left(starts, a) : bisect_left(starts, b)]:
        if c not in neutral:
            attack.append((s, c))
        if c in _YOU:
            addressed.append(s)
    best, pairs = concept_sweep(attack, table.window)
    value = sum(map(table.pair, pairs))
    value += table.get("win") * (min(best, 6) / 3)
    for k in (2, 3, 4):
        if best >= k:
            value += table.get(f"win>={k}")
    if addressed:
        near = 0
        for start, _ in attack:
            k = bisect_left(addressed, start - table.you_near)
            near += k < len(addressed) and addressed[k] <= start + table.you_near
        value += table.get("you_near") * (min(near, 6) / 3)
    per_sentence: dict[int, set[str]] = {}
    for start, concept in attack:
        per_sentence.setdefault(bisect_left(sentence_ends, start), set()).add(concept)
    most = max(len(s) for s in per_sentence.values())
    value += table.get("sent") * (min(most, 5) / 3)
    for k in (2, 3, 4):
        if most >= k:
            value += table.get(f"sent>={k}")
    return value


def _positions(text: str, pattern: re.Pattern[str]) -> list[int]:
    return [m.start() for m in pattern.finditer(text)]


def _label_positions(text: str, pattern: re.Pattern[str]) -> list[int]:
    """Where the label-line pattern matches. It is anchored at line starts (MULTILINE `^`), so a text
    without a line break can match only at 0: one match attempt instead of a scan."""
    if "\n" in text:
        return _positions(text, pattern)
    return [0] if pattern.match(text) else []


def concept_sweep(events: list[tuple[int, str]], window: int) -> tuple[int, set[tuple[str, str]]]:
    """The most distinct concepts within `window` characters, and every pair of distinct concepts
    that stand within `window` of each other. One sweep: the concepts in the current window are
    counted in a dict, so each event costs at most the number of concepts (~50)."""
    in_window: dict[str, int] = {}
    pairs: set[tuple[str, str]] = set()
    best = 0
    left = 0
    for start, concept in events:
        while events[left][0] < start - window:
            gone = events[left][1]
            in_window[gone] -= 1
            if not in_window[gone]:
                del in_window[gone]
            left += 1
        for other in in_window:
            if other != concept:
                pairs.add((concept, other) if concept < other else (other, concept))
        in_window[concept] = in_window.get(concept, 0) + 1
        best = max(best, len(in_window))
    return best, pairs
