"""Subject encoding: injective, and never able to widen a subscription or add a level."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.bus.subjects import Subjects, decode_token, encode_token
from schemas.envelope import Lane

TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


@given(st.text(min_size=1, max_size=300))
def test_encoded_token_is_one_safe_token_and_round_trips(value: str) -> None:
    token = encode_token(value)
    assert TOKEN.match(token)
    assert decode_token(token) == value


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_different_names_never_share_a_token(a: str, b: str) -> None:
    if a != b:
        assert encode_token(a) != encode_token(b)


@pytest.mark.parametrize("name", ["a.b", "*", ">", "x y", "ünï", "a\tb", "llama-3.1", "mb.req.>", "_41"])
def test_model_name_cannot_widen_subject(name: str) -> None:
    subject = Subjects("mb").request(name)
    tokens = subject.split(".")
    assert len(tokens) == 5  # mb req <model> <version> <lane>
    assert not {"*", ">"} & set(tokens)
    assert all(TOKEN.match(t) for t in tokens)


def test_lookalike_names_get_distinct_subjects_and_consumers() -> None:
    subjects = Subjects("mb")
    names = ["llama-3.1", "llama-3_2E1", "llama-3_1", "llama-3-1"]
    assert len({subjects.request(n) for n in names}) == len(names)
    assert len({subjects.consumer(n) for n in names}) == len(names)


@given(st.text(min_size=1, max_size=300), st.text(min_size=1, max_size=20))
def test_consumer_names_are_valid_and_bounded(model: str, version: str) -> None:
    name = Subjects("mb").consumer(model, version, Lane.BATCH)
    assert len(name) <= 64
    assert TOKEN.match(name)


def test_decode_rejects_what_encode_cannot_produce() -> None:
    for bad in ["a.b", "_4", "_zz", "_61", "a b"]:  # _61 is 'a', which is never escaped
        with pytest.raises(ValueError):
            decode_token(bad)


def test_empty_token_is_refused() -> None:
    with pytest.raises(ValueError):
        encode_token("")


def test_namespace_is_validated() -> None:
    for bad in ["", "MB", "a.b", "a*", "x" * 40]:
        with pytest.raises(ValueError):
            Subjects(bad)


def test_reply_subject_round_trips_request_id() -> None:
    subjects = Subjects("mb")
    subject = subjects.reply("ingress-1", "req.with*odd>chars")
    assert subjects.request_id_from(subject) == "req.with*odd>chars"
    assert subject.startswith("mb.reply.ingress-1.")
