"""dispatcher/bus/reply_stream.py, the worker side: `ReplyWriter` numbers frames per attempt and, for an
async task, ends the reply through JetStream (so the outcome is stored, once). The sequencer's
ordering rules are covered in tests/unit/dispatcher/bus/test_reply_stream.py."""

from __future__ import annotations

from dispatcher.bus.reply_stream import ReplyWriter, decode_frame
from schemas.envelope import ErrorCode, Pickup, Timings
from schemas.openai import Usage
from tests.unit.conftest import Bus

TIMINGS = Timings(received_ms=1, picked_up_ms=2, finished_ms=3)


async def test_frames_of_one_attempt_are_numbered_from_zero_and_heartbeats_are_not(bus: Bus) -> None:
    subject = bus.subjects.reply("ing", "r1")
    sub = await bus.nc.subscribe(subject)
    writer = ReplyWriter(bus.nc, subject, attempt=3)
    await writer.start(Pickup(worker="w1", backend="sim", version="default", queue_ms=5), announce=True)
    await writer.heartbeat()
    await writer.chunks([b'{"a":1}', b'{"a":2}'])
    await writer.chunks([])  # nothing to send: no frame, no sequence number used
    await writer.final(TIMINGS, Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3), "stop", b"{}")
    got = []
    for _ in range(4):
        frame, payload = decode_frame((await sub.next_msg(timeout=5)).data)
        got.append((frame.kind, frame.attempt, frame.seq, payload))
    assert got == [
        ("start", 3, 0, b""),
        ("heartbeat", 3, 0, b""),
        ("chunk", 3, 1, b'{"a":1}\n{"a":2}'),
        ("final", 3, 2, b"{}"),
    ]
    assert writer.finished and writer.usage is not None and writer.usage.total_tokens == 3


async def test_sent_data_turns_on_with_the_first_chunk_only(bus: Bus) -> None:
    writer = ReplyWriter(bus.nc, bus.subjects.reply("ing", "r2"), attempt=1)
    await writer.start(Pickup(worker="w1", backend="sim", version="default", queue_ms=0), announce=True)
    await writer.heartbeat()
    await writer.chunks([])
    assert not writer.sent_data  # a retry elsewhere would still be invisible to the client
    await writer.chunks([b"{}"])
    assert writer.sent_data


async def test_an_error_frame_finishes_the_reply_with_its_details(bus: Bus) -> None:
    subject = bus.subjects.reply("ing", "r3")
    sub = await bus.nc.subscribe(subject)
    writer = ReplyWriter(bus.nc, subject, attempt=1)
    await writer.error(ErrorCode.BACKEND_UNAVAILABLE, "down", 503, retryable=True, api_code="x", param="p")
    frame, _ = decode_frame((await sub.next_msg(timeout=5)).data)
    assert frame.kind == "error" and writer.finished
    assert (frame.code, frame.status, frame.retryable, frame.client_code, frame.param) == (  # type: ignore[union-attr]
        ErrorCode.BACKEND_UNAVAILABLE,
        503,
        True,
        "x",
        "p",
    )


async def test_a_task_reply_ends_through_jetstream_and_is_stored_once(bus: Bus) -> None:
    subject = bus.subjects.task_reply("task-1")
    writer = ReplyWriter(bus.nc, subject, attempt=1, js=bus.js)
    await writer.start(Pickup(worker="w1", backend="sim", version="default", queue_ms=0), announce=True)
    await writer.final(TIMINGS, None, "stop", b'{"ok":true}')
    stored = await bus.js.get_last_msg(bus.subjects.task_reply_stream, subject)
    frame, payload = decode_frame(stored.data)
    assert (frame.kind, payload) == ("final", b'{"ok":true}')
    before = (await bus.js.stream_info(bus.subjects.task_reply_stream)).state.messages
    # The same attempt's last frame published again (a retry after a lost ack) is deduplicated.
    again = ReplyWriter(bus.nc, subject, attempt=1, js=bus.js)
    again._seq = 1
    await again.final(TIMINGS, None, "stop", b'{"ok":true}')
    info = await bus.js.stream_info(bus.subjects.task_reply_stream)
    assert info.state.messages == before
