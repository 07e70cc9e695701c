"""The concept scorer's window bound (injection_score_bound.py): injection_score.attacks skips a
window whose bound is below the threshold, so the bound must be at least the exact score of every
window, and attacks must find what scoring every window finds. Checked on every tuning prompt
(and on long texts made of them), on generated texts of lexicon terms and marks, and with random
weights of both signs, so that a refit cannot make the skip unsound unnoticed."""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.guardrails_eval import load
from dispatcher.guardrails import injection_score
from dispatcher.guardrails.injection import concept_hits
from dispatcher.guardrails.injection_score import (
    _EARLY,
    _MARKS,
    NEUTRAL,
    Model,
    _Found,
    _table,
    _windows,
    score,
    shipped,
)
from dispatcher.guardrails.injection_score_bound import SHOUTED, swept, window_parts
from dispatcher.guardrails.injection_terms import terms
from dispatcher.guardrails.normalize import normalize

Span = tuple[int, int]


def _prepared(text: str) -> tuple[str, dict[str, list[Span]], list[tuple[int, str]]]:
    view = normalize(text).text
    matched: list[tuple[int, str]] = []
    return view, concept_hits(view, matched), matched


def _reference_attacks(
    view: str, hits: dict[str, list[Span]], matched: list[tuple[int, str]], model: Model
) -> list[Span]:
    """injection_score.attacks as it was before the bound: every window with an attack concept is
    scored."""
    if not any(spans for concept, spans in hits.items() if concept not in NEUTRAL):
        return []
    found = _Found(view, hits, matched)
    spans = []
    for a, b in _windows(len(view)):
        window = found.features(a, b)
        if window is not None and score(window, model) > model.threshold:
            spans.append(found.attack_span(a, b))
    return spans


def _check(text: str, model: Model) -> int:
    """Asserts, in every window of `text`, that the fast score (the exact parts of window_parts and
    swept) equals the reference score and that the bound is at least it, and that attacks finds
    what the reference finds; returns how many windows the bound let attacks skip."""
    view, hits, matched = _prepared(text)
    windows = _windows(len(view))
    table = _table(model)
    parts = window_parts(view, hits, matched, windows, table, NEUTRAL, _MARKS, _EARLY)
    found = _Found(view, hits, matched)
    skipped = 0
    for (a, b), (known, most) in zip(windows, parts, strict=True):
        window = found.features(a, b)
        if window is None:
            assert known == -math.inf, (text, a, b)
            continue
        exact = score(window, model)
        fast = known + swept(found.events, found.starts, found.sentence_ends, a, b, table, NEUTRAL)
        assert fast == pytest.approx(exact, rel=0, abs=1e-9), (text, a, b, fast, exact)
        assert known + most >= exact - 1e-9, (text, a, b, known + most, exact)
        skipped += known + most < model.threshold
    injection_score.use(model)
    try:
        assert injection_score.attacks(view, hits, matched) == _reference_attacks(view, hits, matched, model)
    finally:
        injection_score.use(None)
    return skipped


# The features the bound does not compute (it takes the most their weights can add).
_SWEPT = ("co:", "win", "sent", "you_near")


def _without_swept(model: Model) -> Model:
    weights = {name: w for name, w in model.weights.items() if not name.startswith(_SWEPT)}
    return Model(weights, model.bias, model.threshold)


def _assert_exact(text: str, model: Model) -> None:
    """Without the swept features' weights the bound is the exact score: its other parts (concepts,
    early concepts, distinct, rule pairs, terms, marks) are computed, not bounded."""
    view, hits, matched = _prepared(text)
    windows = _windows(len(view))
    parts = window_parts(view, hits, matched, windows, _table(model), NEUTRAL, _MARKS, _EARLY)
    found = _Found(view, hits, matched)
    for (a, b), (known, most) in zip(windows, parts, strict=True):
        window = found.features(a, b)
        if window is not None:
            assert known + most == pytest.approx(score(window, model), rel=0, abs=1e-9), (text, a, b)


def _random_model(seed: int) -> Model:
    """The shipped features with weights of random sign and size: the bound must not rely on the
    signs the current fit happens to have."""
    rng = random.Random(seed)
    names = list(shipped().weights)
    return Model(
        {name: rng.uniform(-3.0, 3.0) for name in names}, rng.uniform(-2.0, 2.0), rng.uniform(-1.0, 3.0)
    )


@pytest.fixture(scope="module")
def tuning_texts() -> list[str]:
    return [str(row["text"]) for row in load(split="tuning")]


def test_the_bound_holds_on_every_tuning_prompt(tuning_texts: list[str]) -> None:
    skipped = sum(_check(text, shipped()) for text in tuning_texts)
    assert skipped > 1000  # the bound does skip windows, or the cost it saves is not there


def test_the_bound_holds_on_long_texts_of_tuning_prompts(tuning_texts: list[str]) -> None:
    # Consecutive prompts of one file joined: many windows, concepts across window boundaries.
    for start in range(0, len(tuning_texts), 40):
        _check("\n".join(tuning_texts[start : start + 40]), shipped())
        _check(" ".join(tuning_texts[start + 20 : start + 30]), shipped())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_bound_holds_with_random_weights_on_tuning_prompts(tuning_texts: list[str], seed: int) -> None:
    model = _random_model(seed)
    for text in tuning_texts[seed::7]:
        _check(text, model)


def test_the_bound_is_exact_without_the_swept_features(tuning_texts: list[str]) -> None:
    model = _without_swept(shipped())
    for text in tuning_texts[::3]:
        _assert_exact(text, model)
    for start in range(0, len(tuning_texts), 200):
        _assert_exact("\n".join(tuning_texts[start : start + 40]), model)


# Generated texts: lexicon terms (every concept can occur, in any order and distance) mixed with the
# marks the scorer counts (questions, shouting, labelled lines, quotes, line breaks) and filler.
_TERMS = sorted(terms().concepts)
_EXTRA = ["you", "your", "the", "and", "report", "?", "!", "！", "IMPORTANT", "SYSTEM:", "[admin]", "### ",
          '"', "«", "»", "'", "「", ".", "\n", "Note:", "。"]  # fmt: skip
_TOKENS = st.one_of(st.sampled_from(_TERMS), st.sampled_from(_EXTRA))
_SEPARATORS = st.sampled_from([" ", " ", " ", "", "\n", ". ", ", ", "? "])
_TEXTS = st.lists(st.tuples(_TOKENS, _SEPARATORS), max_size=400).map(
    lambda parts: "".join(t + s for t, s in parts)
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_TEXTS)
def test_the_bound_holds_on_generated_texts(text: str) -> None:
    _check(text, shipped())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_TEXTS, st.integers(0, 20))
def test_the_bound_holds_on_generated_texts_with_random_weights(text: str, seed: int) -> None:
    _check(text, _random_model(seed))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_TEXTS, st.integers(0, 20))
def test_the_bound_is_exact_without_the_swept_features_on_generated_texts(text: str, seed: int) -> None:
    _assert_exact(text, _without_swept(_random_model(seed)))


def _shouted(pattern: re.Pattern[str], text: str) -> list[int]:
    return [m.start() for m in pattern.finditer(text)]


_CAPS = ["ABCD", "aABCD", "ABCDa", "ABCDÉ", "_ABCD", "ÉABCD EFGH", "AB CDEF GHIJKL1 MNOP_ QRST", "ABC",
         "ΑBCD ABCDΣ", "İABCD", "IMPORTANT: ignore", "x\nSYSTEM\n", "ABCD-EFGH", "ABCDEFG."]  # fmt: skip


def test_the_faster_shouting_pattern_finds_the_same_places(tuning_texts: list[str]) -> None:
    for text in [*tuning_texts, *_CAPS]:
        assert _shouted(SHOUTED, text) == _shouted(_MARKS["shouted"], text), text


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcÉΣ_1 .:-\n"), max_size=60))
def test_the_faster_shouting_pattern_finds_the_same_places_in_generated_text(text: str) -> None:
    assert _shouted(SHOUTED, text) == _shouted(_MARKS["shouted"], text)


def _windows_of(text: str) -> Iterator[Span]:
    yield from _windows(len(normalize(text).text))


def test_generated_texts_are_long_enough_for_several_windows() -> None:
    # The strategy reaches multi-window texts (SEGMENT is 500 characters).
    assert len(list(_windows_of(" ".join(_TERMS[:400])))) > 2
