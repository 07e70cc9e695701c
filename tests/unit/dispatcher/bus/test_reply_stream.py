"""Reply frames: codec, ordering, duplicates, gaps, and redelivered attempts."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.bus.reply_stream import ReplySequencer, decode_frame, encode_frame
from dispatcher.errors import StreamBroken
from schemas.envelope import (
    ChunkFrame,
    ErrorCode,
    ErrorFrame,
    FinalFrame,
    HeartbeatFrame,
    StartFrame,
    Timings,
)


def _start(attempt: int = 1) -> StartFrame:
    return StartFrame(attempt=attempt, seq=0, worker="w", backend="b", queue_ms=0)


def _chunk(seq: int, attempt: int = 1) -> ChunkFrame:
    return ChunkFrame(attempt=attempt, seq=seq, count=1)


def _seqs(items: list[tuple[object, bytes]]) -> list[int]:
    return [frame.seq for frame, _ in items]  # type: ignore[attr-defined]


def test_codec_round_trips_payload_with_newlines() -> None:
    frame = _chunk(3)
    decoded, payload = decode_frame(encode_frame(frame, b'{"a":1}\n{"b":2}'))
    assert decoded == frame
    assert payload == b'{"a":1}\n{"b":2}'


def test_codec_round_trips_every_kind() -> None:
    timings = Timings(received_ms=1, picked_up_ms=2, finished_ms=3)
    frames = [
        _start(),
        _chunk(1),
        FinalFrame(seq=2, timings=timings),
        ErrorFrame(seq=3, code=ErrorCode.BACKEND_ERROR, message="m", status=502),
        HeartbeatFrame(),
    ]
    for frame in frames:
        assert decode_frame(encode_frame(frame))[0] == frame


def test_in_order_frames_pass_straight_through() -> None:
    seq = ReplySequencer()
    assert _seqs(seq.push(_start(), b"")) == [0]
    assert _seqs(seq.push(_chunk(1), b"")) == [1]


def test_duplicates_are_dropped() -> None:
    seq = ReplySequencer()
    seq.push(_start(), b"")
    seq.push(_chunk(1), b"")
    assert seq.push(_chunk(1), b"") == []
    assert seq.push(_start(), b"") == []


def test_reordered_frames_are_released_in_order() -> None:
    seq = ReplySequencer()
    seq.push(_start(), b"")
    assert seq.push(_chunk(3), b"") == []
    assert seq.push(_chunk(2), b"") == []
    assert seq.gap_deadline is not None
    assert _seqs(seq.push(_chunk(1), b"")) == [1, 2, 3]
    assert seq.gap_deadline is None


def test_gap_that_does_not_fill_breaks_the_stream() -> None:
    seq = ReplySequencer(gap_timeout_s=0.05)
    seq.push(_start(), b"")
    seq.push(_chunk(2), b"")
    time.sleep(0.06)
    with pytest.raises(StreamBroken):
        seq.check_gap(time.monotonic())


def test_too_many_held_frames_break_the_stream() -> None:
    seq = ReplySequencer(window=4)
    seq.push(_start(), b"")
    with pytest.raises(StreamBroken):
        for n in range(2, 10):
            seq.push(_chunk(n), b"")


def test_newer_attempt_restarts_and_older_attempt_is_ignored() -> None:
    seq = ReplySequencer()
    seq.push(_start(1), b"")
    seq.push(_chunk(1, attempt=1), b"")
    assert _seqs(seq.push(_start(2), b"")) == [0]
    assert seq.attempt == 2
    assert seq.push(_chunk(2, attempt=1), b"") == []  # the old worker is still talking
    assert _seqs(seq.push(_chunk(1, attempt=2), b"")) == [1]


def test_heartbeats_carry_no_data() -> None:
    assert ReplySequencer().push(HeartbeatFrame(), b"") == []


@given(st.permutations(list(range(1, 30))))
def test_any_arrival_order_yields_every_frame_once_in_order(order: list[int]) -> None:
    seq = ReplySequencer(window=64)
    out = _seqs(seq.push(_start(), b""))
    for n in order:
        out += _seqs(seq.push(_chunk(n), b""))
        out += _seqs(seq.push(_chunk(n), b""))  # and a duplicate of each
    assert out == list(range(30))
