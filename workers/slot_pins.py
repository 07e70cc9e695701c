"""Which backend slot each request runs in, for a backend that keeps one prompt per slot (llama.cpp).

llama.cpp's server keeps the KV cache of the last prompt each slot served and, left to choose, puts
a request in the idle slot whose prompt is most alike or else the least recently used one. That
choice knows nothing of affinity: a stolen request (another worker's prompt) lands in whichever
slot was idle longest and evicts the home prompt it held, and the next request of that prompt is
prefilled cold (bench/affinity.py saw a 2 s steal grace cascade into misses this way). So a worker
with `affinity.guest_slots` pins every request to a slot with the server's `id_slot`:

- the last `guests` slots take stolen work, so a steal never costs a home prompt; a guest slot that
  last served the same bucket is preferred (a prompt stolen again is warm there too);
- the other slots take this worker's own work, each bucket back to the slot that served it last
  while that slot is free, else the least recently used free one;
- when its own kind of slot is all taken, a request takes a free slot of the other kind rather
  than wait: the puller never asks for more requests than there are free slots, so one is free.

Slots are numbered from `first` (a worker run as several processes owns a range of the server's
slots). Requests without a bucket (the FIFO and batch lanes) are pinned like home work without a
prompt to find.
"""

from __future__ import annotations

from typing import Any

from schemas.envelope import Endpoint

# Endpoints a slot-keeping backend runs in a slot; `id_slot` means nothing to the others.
_SLOTTED = frozenset({Endpoint.CHAT, Endpoint.COMPLETIONS, Endpoint.RESPONSES, Endpoint.MESSAGES})


def pinned(endpoint: Endpoint, payload: dict[str, Any], slot: int | None) -> dict[str, Any]:
    """The backend request, pinned to `slot` (llama.cpp's `id_slot`) when the worker chose one."""
    if slot is None or endpoint not in _SLOTTED:
        return payload
    return {**payload, "id_slot": slot}


class SlotPins:
    def __init__(self, slots: int, guests: int, first: int = 0) -> None:
        if not 0 < guests < slots:
            raise ValueError(f"guest slots must leave at least one home slot: {guests} of {slots}")
        ids = range(first, first + slots)
        self._home = list(ids[: slots - guests])
        self._guest = list(ids[slots - guests :])
        self._free = set(ids)
        self._served: dict[int, int | None] = dict.fromkeys(ids)  # slot -> the bucket it served last
        self._used: dict[int, int] = dict.fromkeys(ids, 0)  # slot -> tick of its last use
        self._tick = 0

    @property
    def free_guests(self) -> int:
        return sum(1 for slot in self._guest if slot in self._free)

    def take(self, bucket: int | None, stolen: bool) -> int | None:
        """A free slot for a request of `bucket` (None: no prompt bucket); None when none is free
        (only for a message that arrived beyond the capacity: it runs unpinned)."""
        first, then = (self._guest, self._home) if stolen else (self._home, self._guest)
        for pool in (first, then):
            free = [slot for slot in pool if slot in self._free]
            if free:
                same = [slot for slot in free if bucket is not None and self._served[slot] == bucket]
                slot = same[0] if same else min(free, key=self._used.__getitem__)
                self._free.discard(slot)
                self._served[slot] = bucket
                self._tick += 1
                self._used[slot] = self._tick
                return slot
        return None

    def give(self, slot: int) -> None:
        self._free.add(slot)
