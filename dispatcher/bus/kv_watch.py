"""Watching a KV bucket without ever going quietly deaf.

nats-py's KV watch is an ordered push consumer. It survives a reconnect, but not a bucket deleted
and created again: the new stream numbers its messages from 1 and the watcher, resuming after the
last sequence it saw, waits for numbers the new stream reaches only much later — revocations
included. So every `check_every_s` the watch compares itself with the bucket's stream: a stream that
is gone or was created anew, or messages the watcher has not delivered a whole interval after they
were stored, end the watch with `WatchLost`, and its supervisor starts a fresh one (which reads
every current value again).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from nats.errors import Error as NatsError
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from dispatcher.errors import WatchLost

log = logging.getLogger(__name__)

_CHECK_EVERY_S = 1.0


def kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


async def watch_bucket(
    js: JetStreamContext,
    kv: KeyValue,
    bucket: str,
    keys: str = ">",
    check_every_s: float = _CHECK_EVERY_S,
) -> AsyncIterator[KeyValue.Entry | None]:
    """The current value of every key, then `None`, then every change (deletes included), until
    the watch is lost. `keys` other than `>` must cover every key the bucket has (the stall check
    compares with the whole stream)."""
    stream = kv_stream(bucket)
    info = await _stream_info(js, stream)
    created, seen = info.created, info.state.last_seq or 0
    watcher = await kv.watch(keys)
    next_check = time.monotonic() + check_every_s
    overdue: int | None = None  # a sequence the stream had at the last check that we had not seen
    try:
        while True:
            try:
                entry = await watcher.updates(timeout=check_every_s)  # type: ignore[no-untyped-call]
            except TimeoutError:  # nats-py's own timeout error derives from it
                entry, idle = None, True
            else:
                idle = False
                if entry is not None:
                    seen = max(seen, entry.revision or 0)
                yield entry
            if idle or time.monotonic() >= next_check:
                next_check = time.monotonic() + check_every_s
                try:
                    info = await _stream_info(js, stream)
                except (NatsError, TimeoutError) as exc:
                    # NATS is away for a moment (a reconnect): check again next time. A watch that
                    # does not resume afterwards shows up as overdue changes then.
                    log.debug("bucket %s not checked: %s", bucket, type(exc).__name__)
                    continue
                if info.created != created:
                    raise WatchLost(f"bucket {bucket} was created anew")
                if overdue is not None and seen < overdue:
                    raise WatchLost(f"the watch on bucket {bucket} stopped delivering changes")
                last = info.state.last_seq or 0
                overdue = last if last > seen else None
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]


async def _stream_info(js: JetStreamContext, stream: str) -> api.StreamInfo:
    try:
        return await js.stream_info(stream)
    except NotFoundError:
        raise WatchLost(f"stream {stream} is gone") from None
