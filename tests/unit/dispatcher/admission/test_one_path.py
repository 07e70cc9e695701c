"""Only admission builds request envelopes, and it cannot leave the quota hold or the output
guardrails out: the check the admission issue asks anyone to be able to run, as a test."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas.envelope import Endpoint, RequestEnvelope

ROOT = Path(__file__).resolve().parents[4]
PRODUCT = ("schemas", "dispatcher", "ingress", "workers", "modelbus", "simulator")
BUILDS_ENVELOPE = re.compile(r"\bRequestEnvelope\(|\benvelope_to\(")


def test_no_envelope_is_built_outside_the_admission_module() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for package in PRODUCT
        for path in sorted((ROOT / package).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if BUILDS_ENVELOPE.search(line) and not line.lstrip().startswith("class ")
    ]
    assert len(found) == 1 and found[0].startswith("dispatcher/admission/admitted.py:"), found


@pytest.mark.parametrize("missing", ["quota", "output_guard"])
def test_an_envelope_without_quota_or_output_guard_is_refused(missing: str) -> None:
    fields = {
        "id": "r",
        "endpoint": Endpoint.CHAT,
        "model": "m",
        "target": "m",
        "consumer": "c",
        "created_ms": 1,
        "deadline_ms": 2,
        "reply_to": "x",
        "quota": None,
        "output_guard": None,
        "payload": {},
    }
    RequestEnvelope(**fields)  # both stated, even as None: fine
    del fields[missing]
    with pytest.raises(ValidationError, match=missing):
        RequestEnvelope(**fields)
