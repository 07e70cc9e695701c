"""dispatcher/audit/compare.py: the prompt and answer of an audit record as text, and how alike two
answers are (for `audit compare`)."""

from __future__ import annotations

from typing import Any

import pytest

from dispatcher.audit.compare import answer_of, prompt_of, shorten, text_similarity


@pytest.mark.parametrize(
    ("record_input", "text"),
    [
        (
            {
                "messages": [
                    {"role": "user", "content": "first"},
                    {"role": "assistant", "content": "a"},
                    {"role": "user", "content": "last"},
                ]
            },
            "last",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "in"}, {"type": "text", "text": "parts"}],
                    }
                ]
            },
            "in parts",
        ),
        ({"messages": [{"role": "system", "content": "only a system turn"}]}, ""),
        ({"prompt": "complete me"}, "complete me"),
        ({"input": ["a", "b"]}, "a b"),
        ("not a dict", ""),
        (None, ""),
    ],
)
def test_the_prompt_is_the_last_user_turn_or_the_prompt(record_input: Any, text: str) -> None:
    assert prompt_of(record_input) == text


@pytest.mark.parametrize(
    ("output", "text"),
    [
        ({"choices": [{"message": {"content": "chat answer"}}]}, "chat answer"),
        ({"choices": [{"text": "completion"}]}, "completion"),
        ({"text": "streamed and joined"}, "streamed and joined"),
        ({"embeddings": 2, "dimensions": 384}, "[2 embeddings of 384 dimensions]"),
        ({"choices": []}, ""),
        (["not", "a", "body"], ""),
    ],
)
def test_the_answer_is_the_first_choice_or_the_streamed_text(output: Any, text: str) -> None:
    assert answer_of(output) == text


def test_similarity_runs_from_nothing_in_common_to_the_same_words() -> None:
    assert text_similarity("the cat sat", "the cat sat") == 1.0
    assert text_similarity("alpha beta", "gamma delta") == 0.0
    close = text_similarity("the cat sat on the mat.", "the cat sat on a mat.")
    far = text_similarity("the cat sat on the mat.", "a dog ran.")
    assert 0.0 < far < close < 1.0


def test_shorten_flattens_and_marks_what_it_cut() -> None:
    assert shorten("a\n  b\tc", 10) == "a b c"
    assert shorten("abcdefghij", 5) == "abcd…"
