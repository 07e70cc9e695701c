"""workers/coalescer.py with the simulator as the embedding backend: compatible requests share one
call and each gets exactly its own vectors back; a full batch leaves at once; a busy backend lets the
next batch grow; a failed call fails every member; token-id inputs pass through."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from schemas.config import SimulatorBackend
from schemas.envelope import Endpoint
from workers.backends import build_backend
from workers.backends.backend_errors import BackendError
from workers.backends.base import Backend
from workers.coalescer import EmbeddingCoalescer


def _backend(**config: Any) -> Backend:
    return build_backend(
        SimulatorBackend(embedding_latency_ms=config.pop("latency_ms", 1), **config), "e", 64
    )


def _request(texts: str | list[str], **extra: Any) -> dict[str, Any]:
    return {"model": "e", "input": texts, **extra}


async def _alone(backend: Backend, texts: str | list[str], **extra: Any) -> list[list[float]]:
    body = await backend.complete(Endpoint.EMBEDDINGS, _request(texts, **extra))
    return [item["embedding"] for item in body["data"]]


async def test_requests_within_the_window_share_one_call_and_get_their_own_vectors() -> None:
    backend = _backend()
    coalescer = EmbeddingCoalescer(lambda: backend, 0.05, 64)
    asks: list[str | list[str]] = ["one", ["two", "three"], "four", ["five"]]
    answers = await asyncio.gather(*(coalescer.embed(_request(texts)) for texts in asks))
    assert coalescer.backend_calls == 1
    for texts, answer in zip(asks, answers, strict=True):
        assert [item["embedding"] for item in answer["data"]] == await _alone(backend, texts)
        assert [item["index"] for item in answer["data"]] == list(range(len(answer["data"])))
    total = sum(answer["usage"]["total_tokens"] for answer in answers)
    assert abs(total - 5) <= len(asks)  # shares of the one call's usage


async def test_only_compatible_requests_are_coalesced() -> None:
    backend = _backend()
    coalescer = EmbeddingCoalescer(lambda: backend, 0.05, 64)
    await asyncio.gather(
        coalescer.embed(_request("a")),
        coalescer.embed(_request("b", encoding_format="base64")),
        coalescer.embed(_request("c", dimensions=8)),
        coalescer.embed(_request("d")),
    )
    assert coalescer.backend_calls == 3


async def test_a_full_batch_leaves_without_waiting_for_its_window() -> None:
    backend = _backend()
    coalescer = EmbeddingCoalescer(lambda: backend, 60.0, 4)  # a window no test would sit out
    answers = await asyncio.wait_for(
        asyncio.gather(*(coalescer.embed(_request(f"t{n}")) for n in range(4))), 5
    )
    assert coalescer.backend_calls == 1 and all(len(a["data"]) == 1 for a in answers)


async def test_a_request_that_would_overfill_the_batch_sends_it_and_starts_the_next() -> None:
    backend = _backend()
    coalescer = EmbeddingCoalescer(lambda: backend, 0.05, 4)
    first = asyncio.ensure_future(coalescer.embed(_request(["a", "b", "c"])))
    await asyncio.sleep(0)
    second = await coalescer.embed(_request(["d", "e"]))
    assert len((await first)["data"]) == 3 and len(second["data"]) == 2
    assert coalescer.backend_calls == 2


async def test_while_the_backend_is_busy_the_next_batch_keeps_growing() -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    calls: list[int] = []
    inner = _backend()

    class Slow:
        native = inner.native
        description = "slow"

        async def complete(self, endpoint: Endpoint, payload: dict[str, Any]) -> dict[str, Any]:
            calls.append(len(payload["input"]))
            started.set()
            await release.wait()
            return await inner.complete(endpoint, payload)

    backend = Slow()
    coalescer = EmbeddingCoalescer(lambda: backend, 0.01, 64)  # type: ignore[arg-type, return-value]
    first = asyncio.ensure_future(coalescer.embed(_request("first")))
    await asyncio.wait_for(started.wait(), 5)
    later = [asyncio.ensure_future(coalescer.embed(_request(f"t{n}"))) for n in range(5)]
    await asyncio.sleep(0.05)  # several windows pass while the first call is at the backend
    assert calls == [1]
    release.set()
    await asyncio.wait_for(asyncio.gather(first, *later), 5)
    assert calls == [1, 5]


async def test_a_failed_call_fails_every_member() -> None:
    backends = [_backend(error_rate=1.0)]
    coalescer = EmbeddingCoalescer(lambda: backends[0], 0.05, 64)
    results = await asyncio.gather(
        *(coalescer.embed(_request(t)) for t in ("a", "b", "c")), return_exceptions=True
    )
    assert all(isinstance(r, BackendError) and r.status == 503 for r in results)
    backends[0] = _backend()  # the worker swapped its backend: the next batch uses the new one
    assert len((await asyncio.wait_for(coalescer.embed(_request("x")), 5))["data"]) == 1
    assert coalescer.backend_calls == 2


@pytest.mark.parametrize("tokens", [[1, 2, 3], [[1, 2], [3]]])
async def test_token_id_inputs_pass_through_uncoalesced(tokens: list[Any]) -> None:
    backend = _backend()
    coalescer = EmbeddingCoalescer(lambda: backend, 60.0, 64)
    answer = await asyncio.wait_for(coalescer.embed(_request(tokens)), 5)  # no window to wait for
    assert len(answer["data"]) == len(tokens) and coalescer.backend_calls == 1
