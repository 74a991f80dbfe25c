"""The step accumulator (edgetts.policy.steps): steps and stop strings, with no model behind it."""

from __future__ import annotations

import pytest

from edgetts.policy.steps import StepAccumulator, trim_steps


def feed(acc: StepAccumulator, pieces: list[bytes]) -> tuple[list[str], str | None]:
    """Add ``pieces`` one token at a time, cutting steps as the policy does; (steps, stop reason)."""
    steps: list[str] = []
    for piece in pieces:
        reason = acc.add(piece)
        if reason is not None:
            return steps, reason
        step = acc.cut()
        if step is not None:
            steps.append(step)
    return steps, None


def test_steps_end_after_the_separator_and_the_rest_carries_over():
    acc = StepAccumulator(max_step_tokens=100)
    steps, reason = feed(acc, [b"One", b".\n", b"\nTw", b"o"])
    assert steps == ["One.\n\n"] and reason is None
    assert acc.leftover() == b"Two"
    later = StepAccumulator(max_step_tokens=100, carry=acc.leftover())
    assert feed(later, [b".\n\n"]) == (["Two.\n\n"], None)


def test_a_long_step_is_cut_at_max_step_tokens():
    acc = StepAccumulator(max_step_tokens=3)
    assert feed(acc, [b"a", b"b", b"c", b"d"]) == (["abc"], None)
    assert acc.rest() == "d"


def test_a_character_split_across_tokens_is_decoded_whole():
    acc = StepAccumulator(max_step_tokens=100)
    euro = "€".encode()
    assert feed(acc, [euro[:1], euro[1:], b"\n\n"]) == (["€\n\n"], None)


def test_the_models_own_stop_string_ends_as_end_of_sequence():
    acc = StepAccumulator(max_step_tokens=100, stop_strings=(b"\nQuestion:",))
    steps, reason = feed(acc, [b"x = 2", b"\nQuest", b"ion: next"])
    assert reason == "eos" and acc.rest() == "x = 2"


def test_a_search_stop_string_inside_a_step_is_cut_off():
    acc = StepAccumulator(max_step_tokens=100, search_stops=(b"END",))
    steps, reason = feed(acc, [b"The ans", b"wer E", b"ND and more"])
    assert reason == "stop" and steps == [] and acc.rest() == "The answer " and acc.trimmed == 0


def test_the_first_of_several_search_stop_strings_wins():
    acc = StepAccumulator(max_step_tokens=100, search_stops=(b"zz", b"b"))
    assert feed(acc, [b"a b zz"])[1] == "stop"
    assert acc.rest() == "a "


def test_a_search_stop_string_across_a_step_boundary_trims_the_finished_step():
    acc = StepAccumulator(max_step_tokens=100, search_stops=(b".\n\nAnswer",))
    steps, reason = feed(acc, [b"Two plus three", b".\n\n", b"Ans", b"wer: 5"])
    assert steps == ["Two plus three.\n\n"] and reason == "stop"
    assert acc.trimmed == len(b".\n\n") and acc.rest() == ""
    trim_steps(steps, acc.trimmed)
    assert steps == ["Two plus three"]


def test_a_search_stop_string_across_extends_uses_the_carried_tail():
    """Steps finished in an earlier extend (the path went back to the strategy) still count."""
    first = StepAccumulator(max_step_tokens=100, search_stops=(b"5.\n\nSo",))
    steps, _ = feed(first, [b"It is 5", b".\n", b"\n"])
    assert steps == ["It is 5.\n\n"] and first.tail == b"It is 5.\n\n"[-len(b"5.\n\nSo") :]
    second = StepAccumulator(
        max_step_tokens=100, search_stops=first.search_stops, carry=first.leftover(), tail=first.tail
    )
    assert feed(second, [b"So", b" the answer"]) == ([], "stop")
    assert second.trimmed == len(b"5.\n\n")
    trim_steps(steps, second.trimmed)
    assert steps == ["It is "]


def test_a_search_stop_string_in_the_carried_bytes():
    acc = StepAccumulator(max_step_tokens=100, search_stops=(b"STOP",), carry=b"Next ST")
    assert feed(acc, [b"OP"]) == ([], "stop")
    assert acc.trimmed == 0 and acc.rest() == "Next "


def test_the_tail_is_kept_only_for_search_stop_strings():
    acc = StepAccumulator(max_step_tokens=100)
    feed(acc, [b"a long first step\n\n"])
    assert acc.tail == b""
    acc = StepAccumulator(max_step_tokens=100, search_stops=(b"abc",))
    feed(acc, [b"a long first step\n\n"])
    assert acc.tail == b"p\n\n"


@pytest.mark.parametrize(
    "steps, n_bytes, expected",
    [
        (["a\n\n", "bc\n\n"], 2, ["a\n\n", "bc"]),
        (["a\n\n", "bc\n\n"], 4, ["a\n\n"]),  # the stop string began the second step
        (["a\n\n", "bc\n\n"], 0, ["a\n\n", "bc\n\n"]),
        (["a\n\n", "  \n\n"], 1, ["a\n\n"]),  # blank once trimmed: dropped
        (["é\n\n"], 2, ["é"]),
        (["a"], 5, []),
    ],
)
def test_trim_steps(steps, n_bytes, expected):
    trim_steps(steps, n_bytes)
    assert steps == expected
