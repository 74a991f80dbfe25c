"""The policy's bookkeeping without a model: the slot pool, the park budget and the bytes-to-steps
accumulator."""

import pytest

from edgetts.policy.slots import TEMPLATE_SLOT, ParkBudget, SlotPool
from edgetts.policy.steps import StepAccumulator, trim_steps


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
    assert acc.add(b"\nQuestion: what") == "eos"  # the model's own: as at end of sequence
    assert acc.rest() == "The answer is 5."


def test_the_models_stop_string_is_found_after_a_newline_carried_from_the_last_extend():
    """Seen in a review: a base model's examples are three newlines apart; the separator closed a
    step on two of them, the third was carried to the next extend, and the path went on into an
    invented next question (only the text of this extend was searched)."""
    first = StepAccumulator(max_step_tokens=100, stop_strings=(b"\nQuestion:",))
    assert feed(first, [b"The answer is 5.", b"\n\n\n"]) == ["The answer is 5.\n\n"]
    second = StepAccumulator(
        max_step_tokens=100, stop_strings=(b"\nQuestion:",), carry=first.leftover(), tail=first.tail
    )
    assert second.add(b"Question") is None
    assert second.add(b":") == "eos" and second.rest() == "" and second.trimmed == 0


def test_the_models_stop_string_that_began_in_the_finished_step_trims_it():
    acc = StepAccumulator(max_step_tokens=100, stop_strings=(b"\nQuestion:",))
    steps, reason = feed_to_stop(acc, [b"So 5.", b"\n\n", b"Question: next"])
    assert steps == ["So 5.\n\n"] and reason == "eos" and acc.trimmed == 1
    trim_steps(steps, acc.trimmed)
    assert steps == ["So 5.\n"]


def test_bytes_of_one_character_are_decoded_only_together():
    euro = "€".encode()  # three bytes, as two tokens may split them
    acc = StepAccumulator(max_step_tokens=100)
    assert feed(acc, [b"costs 5", euro[:2], euro[2:], b".\n\n"]) == ["costs 5€.\n\n"]


def test_a_character_split_by_the_token_limit_is_whole_or_left_out():
    """Seen in a user's review: a reply cut off at its token limit mid-emoji ended in U+FFFD;
    a step cut at max_step_tokens mid-character wrote U+FFFD on both sides of the cut."""
    apple = "🍎".encode()  # four bytes
    acc = StepAccumulator(max_step_tokens=2)
    assert feed(acc, [b"an ", apple[:2], apple[2:], b" a"]) == ["an ", "🍎 a"]
    cut_off = StepAccumulator(max_step_tokens=100)
    feed(cut_off, [b"three ", apple[:2]])
    assert cut_off.rest() == "three "  # the path ended: its half character is left out
    carried = StepAccumulator(max_step_tokens=100, carry=b"two " + apple[:1])
    feed(carried, [apple[1:3]])
    assert carried.rest() == "two "


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


# -- the search's stop strings (Sampling.stop: a client's OpenAI stop) ---------------------------


def feed_to_stop(acc: StepAccumulator, pieces: list[bytes]) -> tuple[list[str], str | None]:
    """Like feed, until a stop string appears: (the steps completed, the stop reason)."""
    steps: list[str] = []
    for piece in pieces:
        reason = acc.add(piece)
        if reason is not None:
            return steps, reason
        step = acc.cut()
        if step is not None:
            steps.append(step)
    return steps, None


def test_a_search_stop_string_inside_a_step_is_cut_off():
    acc = StepAccumulator(max_step_tokens=100, search_stops=(b"END",))
    steps, reason = feed_to_stop(acc, [b"The ans", b"wer E", b"ND and more"])
    assert reason == "stop" and steps == [] and acc.rest() == "The answer " and acc.trimmed == 0


def test_the_first_of_several_search_stop_strings_wins():
    acc = StepAccumulator(max_step_tokens=100, search_stops=(b"zz", b"b"))
    assert feed_to_stop(acc, [b"a b zz"])[1] == "stop"
    assert acc.rest() == "a "


def test_a_search_stop_string_across_a_step_boundary_trims_the_finished_step():
    acc = StepAccumulator(max_step_tokens=100, search_stops=(b".\n\nAnswer",))
    steps, reason = feed_to_stop(acc, [b"Two plus three", b".\n\n", b"Ans", b"wer: 5"])
    assert steps == ["Two plus three.\n\n"] and reason == "stop"
    assert acc.trimmed == len(b".\n\n") and acc.rest() == ""
    trim_steps(steps, acc.trimmed)
    assert steps == ["Two plus three"]


def test_a_search_stop_string_across_extends_uses_the_carried_tail():
    """Steps finished in an earlier extend (the path went back to the strategy) still count."""
    first = StepAccumulator(max_step_tokens=100, search_stops=(b"5.\n\nSo",))
    steps, _ = feed_to_stop(first, [b"It is 5", b".\n", b"\n"])
    assert steps == ["It is 5.\n\n"] and first.tail == b"It is 5.\n\n"[-len(b"5.\n\nSo") :]
    second = StepAccumulator(
        max_step_tokens=100, search_stops=first.search_stops, carry=first.leftover(), tail=first.tail
    )
    assert feed_to_stop(second, [b"So", b" the answer"]) == ([], "stop")
    assert second.trimmed == len(b"5.\n\n")
    trim_steps(steps, second.trimmed)
    assert steps == ["It is "]


def test_a_search_stop_string_in_the_carried_bytes():
    acc = StepAccumulator(max_step_tokens=100, search_stops=(b"STOP",), carry=b"Next ST")
    assert feed_to_stop(acc, [b"OP"]) == ([], "stop")
    assert acc.trimmed == 0 and acc.rest() == "Next "


def test_the_tail_is_kept_only_for_search_stop_strings():
    acc = StepAccumulator(max_step_tokens=100)
    feed_to_stop(acc, [b"a long first step\n\n"])
    assert acc.tail == b""
    acc = StepAccumulator(max_step_tokens=100, search_stops=(b"abc",))
    feed_to_stop(acc, [b"a long first step\n\n"])
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


def test_more_sequences_than_llama_cpp_holds_is_refused_before_the_model_loads():
    from edgetts.policy import LlamaPolicy, PolicyConfig, PolicyError

    with pytest.raises(PolicyError, match="at most 256"):
        LlamaPolicy(PolicyConfig(model="/nonexistent.gguf", n_seq_max=250, max_searches=8))


@pytest.mark.parametrize("value, threads", [("", None), (" 1 ", 1), ("0", "positive"), ("two", "positive")])
def test_edgetts_threads_is_read_in_one_place(monkeypatch, value, threads):
    """The policy's default and ``run --ray``'s actors read $EDGETTS_THREADS alike."""
    from edgetts.policy.config import PolicyError, default_threads, env_threads

    monkeypatch.setenv("EDGETTS_THREADS", value)
    if isinstance(threads, str):
        for read in (env_threads, default_threads):
            with pytest.raises(PolicyError, match=threads):
                read()
    else:
        assert env_threads() == threads
        assert default_threads() >= 1
