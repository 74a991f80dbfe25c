"""The policy's bookkeeping without a model: the slot pool, the park budget and the bytes-to-steps
accumulator."""

import pytest

from edgetts.policy.slots import TEMPLATE_SLOT, ParkBudget, SlotPool
from edgetts.policy.steps import StepAccumulator


def feed(acc: StepAccumulator, pieces: list[bytes]) -> list[str]:
    """Add token pieces one at a time; the steps they complete, in order."""
    steps = []
    for piece in pieces:
        assert not acc.add(piece)
        step = acc.cut()
        if step is not None:
            steps.append(step)
    return steps


def test_a_step_ends_after_the_blank_line_and_the_rest_begins_the_next():
    acc = StepAccumulator(max_step_tokens=100)
    assert feed(acc, [b"Add 2", b" and 3.", b"\n\nSo"]) == ["Add 2 and 3.\n\n"]
    assert acc.pending == b"So" and acc.n_tokens == 0
    assert feed(acc, [b" 5.\n", b"\n"]) == ["So 5.\n\n"]


def test_a_long_step_is_cut_at_max_step_tokens():
    acc = StepAccumulator(max_step_tokens=3)
    assert feed(acc, [b"a", b"b", b"c", b"d"]) == ["abc"]
    assert acc.rest() == "d"


def test_a_stop_string_ends_the_text_before_it():
    acc = StepAccumulator(max_step_tokens=100, stop_strings=(b"\nQuestion:",))
    assert not acc.add(b"The answer is 5.")
    assert acc.add(b"\nQuestion: what")
    assert acc.rest() == "The answer is 5."


def test_bytes_of_one_character_are_decoded_only_together():
    euro = "€".encode()  # three bytes, as two tokens may split them
    acc = StepAccumulator(max_step_tokens=100)
    assert feed(acc, [b"costs 5", euro[:2], euro[2:], b".\n\n"]) == ["costs 5€.\n\n"]


def test_the_carry_of_an_earlier_extend_begins_the_next_step():
    first = StepAccumulator(max_step_tokens=100)
    feed(first, [b"one.\n\ntw"])
    second = StepAccumulator(max_step_tokens=100, carry=first.leftover())
    assert feed(second, [b"o.\n\n"]) == ["two.\n\n"]
    assert second.leftover() == b""


def test_slots_are_reused_last_freed_first_and_never_the_template():
    pool = SlotPool(3)
    assert len(pool) == 0  # nothing to fork from before the first prompt
    pool.reset()
    assert sorted(pool.free) == [1, 2, 3] and TEMPLATE_SLOT not in pool.free
    assert pool.next_free() == pool.take() == 1
    second = pool.take()
    pool.give(second)
    assert pool.take() == second and len(pool) == 1


def test_park_budget_holds_within_its_limit_and_gives_back():
    budget = ParkBudget(100)
    assert budget.hold(60) and budget.used == 60
    assert not budget.hold(41)  # past the limit: nothing reserved, the caller re-decodes instead
    assert budget.used == 60
    assert budget.hold(40) and budget.used == 100 == budget.peak
    budget.drop(60)
    assert budget.used == 40 and budget.peak == 100
    assert budget.hold(50) and budget.used == 90 and budget.peak == 100
    with pytest.raises(ValueError):
        budget.drop(91)  # more than is held: a bookkeeping bug, not a silent negative


def test_a_zero_park_budget_holds_nothing():
    budget = ParkBudget(0)
    assert not budget.hold(1) and budget.used == 0
    assert not ParkBudget(10).hold(0)  # an empty copy is never held (nothing to restore)
    with pytest.raises(ValueError):
        ParkBudget(-1)
