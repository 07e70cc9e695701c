"""The worker processes that check large bodies: the same verdicts as inline, and a pool that
recovers when one of its processes is killed."""

from __future__ import annotations

import os
import signal

import orjson
import pytest

from dispatcher.admission.offload import Offload, Prepared
from dispatcher.errors import CheckerUnavailable, InvalidRequest
from dispatcher.guardrails.policies import InputPolicy


@pytest.fixture
def offload() -> Offload:
    pool = Offload(1, 1)
    yield pool  # type: ignore[misc]
    pool.close()


async def test_a_killed_worker_gives_a_retryable_503_and_the_pool_recovers(offload: Offload) -> None:
    pid = await offload.run(os.getpid)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(CheckerUnavailable) as caught:
        await offload.run(os.getpid)
    assert caught.value.status == 503 and caught.value.retry_after_s == 1.0
    assert await offload.run(os.getpid) != pid  # a new process serves


async def test_validation_and_masking_in_a_worker_match_the_inline_rules(offload: Offload) -> None:
    body = orjson.dumps(
        {"model": "m", "max_tokens": "7", "messages": [{"role": "user", "content": "a@b.example"}]}
    )
    prepared = await offload.prepare("/v1/chat/completions", body)
    assert isinstance(prepared, Prepared) and prepared.model == "m" and prepared.max_output == 7
    assert prepared.payload is not None and orjson.loads(prepared.payload)["max_tokens"] == 7  # normalized
    scanned = await offload.scan(InputPolicy(pii="mask"), prepared.payload)
    assert scanned.found == ["pii.email:mask"] and scanned.payload is not None
    assert b"a@b.example" not in scanned.payload
    with pytest.raises(InvalidRequest) as caught:
        await offload.prepare("/v1/chat/completions", b'{"model": "m", "messages": "x"}')
    assert caught.value.param == "messages"
