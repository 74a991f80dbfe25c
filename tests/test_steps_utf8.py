"""The step accumulator (seen in review): a step cut at its token limit keeps whole characters when the
character began in the bytes carried over from an earlier extend."""

from edgetts.policy.steps import StepAccumulator


def test_a_character_begun_in_the_carry_is_not_split_at_the_token_limit():
    acc = StepAccumulator(max_step_tokens=1, carry=b"ab\xe2")  # the first byte of a euro sign
    assert acc.add(b"\x82") is None
    assert acc.cut() == "ab"  # the unfinished character waits for the next step
    assert acc.add(b"\xac") is None
    assert acc.cut() == "\u20ac"
    assert acc.leftover() == b""


def test_a_separator_after_a_carry_still_cuts_after_it():
    acc = StepAccumulator(max_step_tokens=100, carry=b"one \xe2\x82")
    assert acc.add(b"\xac.\n\ntw") is None
    assert acc.cut() == "one \u20ac.\n\n"
    assert acc.leftover() == b"tw"
