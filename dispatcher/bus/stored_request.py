"""Where a published request waits in JetStream, and whether it still does.

A reply frame is core NATS: one published while the waiting ingress reconnects to another node
goes to nobody. Whether the request is still stored tells a lost answer (settled: a work-queue
stream deletes a message once it is acked or terminated) from one still to come (queued, or
delivered and unsettled) — see ReplyStream in dispatcher/bus/client.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import NotFoundError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stored:
    """The stream and sequence of a request's PubAck."""

    stream: str
    seq: int
    duplicate: bool  # the stream already had it: a retry of an earlier publish
    # In the fair-share staging stream: once released, it waits in the request stream under a
    # sequence the ingress never learns.
    staged: bool = False

    @classmethod
    def of(cls, ack: PubAck, staged: bool = False) -> Stored:
        return cls(ack.stream, ack.seq, bool(ack.duplicate), staged)


async def still_stored(js: JetStreamContext, stored: Stored) -> bool | None:
    """True: the message is still in its stream; False: it is gone (settled, or expired); None:
    JetStream did not answer (an election, a reconnect) — ask again later. One lookup on the
    stream leader (not a direct get, which a lagging replica could answer from the past)."""
    try:
        await js.get_msg(stored.stream, seq=stored.seq)
    except NotFoundError:
        return False
    except Exception as exc:  # noqa: BLE001 - unknown is an answer: the caller asks again later
        log.debug("stored request %s/%d not looked up: %s", stored.stream, stored.seq, exc)
        return None
    return True
