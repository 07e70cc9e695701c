"""Which backend slot a request is pinned to: stolen work to the guest slots, each home bucket back
to the slot that served it, and never a slot already taken."""

from __future__ import annotations

import pytest

from workers.slot_pins import SlotPins


def test_stolen_work_takes_a_guest_slot_and_home_work_a_home_slot() -> None:
    pins = SlotPins(4, 1)
    assert pins.free_guests == 1
    assert pins.take(7, stolen=True) == 3
    assert pins.free_guests == 0
    assert {pins.take(k, stolen=False) for k in (1, 2, 3)} == {0, 1, 2}


def test_a_bucket_goes_back_to_the_slot_that_served_it_while_it_is_free() -> None:
    pins = SlotPins(3, 1)
    first = pins.take(5, stolen=False)
    other = pins.take(6, stolen=False)
    assert first is not None and other is not None and first != other
    pins.give(first)
    pins.give(other)
    assert pins.take(5, stolen=False) == first
    assert pins.take(6, stolen=False) == other
    # A guest slot keeps the stolen bucket it served last, too.
    pins = SlotPins(4, 2)
    guest = pins.take(9, stolen=True)
    pins.take(8, stolen=True)
    assert guest is not None
    pins.give(guest)
    pins.give(3 if guest == 2 else 2)
    assert pins.take(9, stolen=True) == guest


def test_a_new_bucket_takes_the_least_recently_used_free_slot() -> None:
    pins = SlotPins(3, 1)
    a, b = pins.take(1, stolen=False), pins.take(2, stolen=False)
    assert a is not None and b is not None
    pins.give(b)
    pins.give(a)
    assert pins.take(3, stolen=False) == a  # a was used before b: its prompt is the older one


def test_when_its_own_kind_is_taken_a_request_uses_the_other_rather_than_wait() -> None:
    pins = SlotPins(3, 1)
    assert pins.take(1, stolen=False) is not None
    assert pins.take(2, stolen=False) is not None
    assert pins.take(3, stolen=False) == 2  # the guest slot, cold either way
    assert pins.take(4, stolen=True) is None  # every slot taken: the request runs unpinned
    pins = SlotPins(3, 1)
    assert pins.take(1, stolen=True) == 2
    assert pins.take(2, stolen=True) in (0, 1)  # past the steal grace: a home slot


def test_slots_are_numbered_from_the_first_of_this_process() -> None:
    pins = SlotPins(2, 1, first=4)
    assert pins.take(None, stolen=False) == 4
    assert pins.take(None, stolen=True) == 5


@pytest.mark.parametrize(("slots", "guests"), [(2, 2), (3, 0), (1, 1)])
def test_guest_slots_must_leave_a_home_slot(slots: int, guests: int) -> None:
    with pytest.raises(ValueError, match="guest slots"):
        SlotPins(slots, guests)
