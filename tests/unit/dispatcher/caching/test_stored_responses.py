"""dispatcher/caching/stored_responses.py on a real KV bucket: a response is only ever its owner's, deletion
leaves no content, a continuation is the stored conversation then the new input, and one too large
for a NATS message is reported as not stored."""

from __future__ import annotations

import pytest

from dispatcher.caching.stored_responses import ResponseStore
from dispatcher.errors import InvalidRequest
from schemas.dialects import StoredResponse
from tests.unit.conftest import Bus

ASKED = {"type": "message", "role": "user", "content": "hi"}
ANSWERED = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hello"}]}
THOUGHT = {"type": "reasoning", "summary": []}


def _record(response_id: str = "resp_1", consumer: str = "alice", text: str = "") -> StoredResponse:
    return StoredResponse(
        id=response_id,
        consumer=consumer,
        created_at=1,
        context=[ASKED],
        response={"id": response_id, "output": [THOUGHT, ANSWERED], "padding": text},
    )


@pytest.fixture
async def store(bus: Bus) -> ResponseStore:
    return await ResponseStore.open(bus.js, bus.subjects, bus.settings, bus.nc.max_payload)


async def test_a_stored_response_is_its_owners_alone(store: ResponseStore) -> None:
    assert await store.save(_record())
    assert await store.get("resp_1", "alice") == _record()
    assert await store.get("resp_1", "mallory") is None  # indistinguishable from no such response
    assert not await store.delete("resp_1", "mallory")
    assert await store.get("resp_1", "alice") is not None


async def test_deleting_removes_the_content_from_the_bucket(bus: Bus, store: ResponseStore) -> None:
    await store.save(_record())
    assert await store.delete("resp_1", "alice")
    assert await store.get("resp_1", "alice") is None
    assert not await store.delete("resp_1", "alice")
    stream = f"KV_{bus.subjects.response_bucket}"
    info = await bus.js.stream_info(stream)
    # Purged: what is left is the purge marker alone; no earlier revision keeps the text.
    assert info.state.messages == 1
    marker = await bus.js.get_msg(stream, info.state.last_seq)
    assert not marker.data and marker.headers is not None and marker.headers["KV-Operation"] == "PURGE"


async def test_a_continuation_is_the_stored_conversation_then_the_new_input(store: ResponseStore) -> None:
    await store.save(_record())
    payload = {"model": "m", "previous_response_id": "resp_1", "input": "and then?", "instructions": "x"}
    continued = await store.continued(payload, "alice")
    assert continued["input"] == [
        ASKED,
        ANSWERED,
        {"type": "message", "role": "user", "content": "and then?"},
    ]
    assert continued["model"] == "m"


async def test_continuing_someone_elses_response_is_not_found(store: ResponseStore) -> None:
    await store.save(_record())
    with pytest.raises(InvalidRequest) as refused:
        await store.continued({"previous_response_id": "resp_1", "input": "hi"}, "mallory")
    assert (refused.value.code, refused.value.param) == (
        "previous_response_not_found",
        "previous_response_id",
    )


async def test_a_response_larger_than_a_nats_message_is_reported_not_stored(
    bus: Bus, store: ResponseStore
) -> None:
    assert not await store.save(_record(text="x" * bus.nc.max_payload))
    assert await store.get("resp_1", "alice") is None
