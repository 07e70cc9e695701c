"""dispatcher/bus/dead_letters.py beyond the end-to-end path in tests/unit/dispatcher/bus/test_dead_letters.py:
what is copied where, undecodable requests, two dispatchers handling one advisory, messages already
gone, unreadable advisories; on a real nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
from nats.aio.msg import Msg

from dispatcher.bus.dead_letters import DeadLetterer
from dispatcher.bus.reply_stream import decode_frame
from schemas.envelope import ErrorCode, RequestEnvelope
from tests.unit.conftest import Bus


async def _replies(bus: Bus, subject: str) -> asyncio.Queue[bytes]:
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_reply(msg: Msg) -> None:
        got.put_nowait(msg.data)

    await bus.nc.subscribe(subject, cb=on_reply)
    await bus.nc.flush()
    return got


async def _dead_letters(bus: Bus) -> int:
    return (await bus.js.stream_info(bus.subjects.dead_letter_stream)).state.messages


async def test_the_request_moves_with_its_history_and_the_client_is_told(
    bus: Bus, make_envelope: Callable[..., RequestEnvelope]
) -> None:
    envelope = make_envelope(target="m", reply_to=bus.subjects.reply("ing", "r"))
    replies = await _replies(bus, envelope.reply_to)
    ack = await bus.js.publish(bus.subjects.request("m"), envelope.model_dump_json().encode())
    await DeadLetterer(bus.nc, bus.subjects).dead_letter(ack.seq, 4, "m__default__interactive")
    with_history = await bus.js.get_last_msg(bus.subjects.dead_letter_stream, bus.subjects.dead_letter("m"))
    assert RequestEnvelope.model_validate_json(with_history.data) == envelope
    assert with_history.headers is not None
    assert with_history.headers["Modelbus-Original-Subject"] == bus.subjects.request("m")
    assert with_history.headers["Modelbus-Deliveries"] == "4"
    assert with_history.headers["Modelbus-Consumer"] == "m__default__interactive"
    assert (await bus.js.stream_info(bus.subjects.request_stream)).state.messages == 0
    frame, _ = decode_frame(await asyncio.wait_for(replies.get(), 5))
    # Attempt 5 (> the 4 deliveries): newer than any worker's frames, so the ingress takes it.
    assert (frame.kind, frame.attempt, frame.code) == ("error", 5, ErrorCode.DEAD_LETTERED)  # type: ignore[union-attr]


async def test_an_undecodable_request_is_kept_aside_without_a_reply(bus: Bus) -> None:
    ack = await bus.js.publish(bus.subjects.request("m"), b"\xff not an envelope")
    await DeadLetterer(bus.nc, bus.subjects).dead_letter(ack.seq, 2, "c")
    kept = await bus.js.get_last_msg(
        bus.subjects.dead_letter_stream, bus.subjects.dead_letter("_undecodable")
    )
    assert kept.data == b"\xff not an envelope"
    assert (await bus.js.stream_info(bus.subjects.request_stream)).state.messages == 0


async def test_two_dispatchers_on_one_advisory_leave_one_dead_letter(
    bus: Bus, make_envelope: Callable[..., RequestEnvelope]
) -> None:
    envelope = make_envelope(reply_to=bus.subjects.reply("ing", "r"))
    replies = await _replies(bus, envelope.reply_to)
    ack = await bus.js.publish(bus.subjects.request("m"), envelope.model_dump_json().encode())
    first, second = DeadLetterer(bus.nc, bus.subjects), DeadLetterer(bus.nc, bus.subjects)
    await asyncio.gather(first.dead_letter(ack.seq, 2, "c"), second.dead_letter(ack.seq, 2, "c"))
    assert await _dead_letters(bus) == 1
    assert first.dead_lettered + second.dead_lettered == 1
    await asyncio.wait_for(replies.get(), 5)
    await bus.nc.flush()
    await asyncio.sleep(0.1)  # a second reply would have been routed by now
    assert replies.empty()  # the client is told once


async def test_a_message_already_gone_is_left_alone(bus: Bus) -> None:
    letterer = DeadLetterer(bus.nc, bus.subjects)
    await letterer.dead_letter(12345, 3, "c")  # acked or expired meanwhile
    assert letterer.dead_lettered == 0 and await _dead_letters(bus) == 0


async def test_advisories_are_read_from_the_bus_and_unreadable_ones_ignored(
    bus: Bus, make_envelope: Callable[..., RequestEnvelope]
) -> None:
    letterer = DeadLetterer(bus.nc, bus.subjects)
    await letterer.start()
    advisory = bus.subjects.max_deliveries_advisory().replace("*", "m__default__interactive")
    for junk in (b"not json", b"{}", b'{"stream_seq": "x"}'):
        await bus.nc.publish(advisory, junk)
    envelope = make_envelope(reply_to=bus.subjects.reply("ing", "r"))
    ack = await bus.js.publish(bus.subjects.request("m"), envelope.model_dump_json().encode())
    body = {"stream_seq": ack.seq, "deliveries": 3, "consumer": "m__default__interactive"}
    await bus.nc.publish(advisory, orjson.dumps(body))
    async with asyncio.timeout(5):
        while letterer.dead_lettered == 0:
            await asyncio.sleep(0.01)
    assert letterer.dead_lettered == 1 and await _dead_letters(bus) == 1
