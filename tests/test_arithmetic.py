"""The calculator check (edgetts.arithmetic) and how a vote uses it (select.voters)."""

from __future__ import annotations

import pytest
from fakes import FakeGenerator, tree_policy

from edgetts.arithmetic import calculator_capped, has_wrong_arithmetic
from edgetts.search.base import SearchConfig
from edgetts.search.majority import majority


@pytest.mark.parametrize(
    ("text", "wrong"),
    [
        ("so he has 4 * 12 = 48 pencils.", False),
        ("so he has 4 * 12 = 52 pencils.", True),
        ("5.2 x 5 = $11.", True),
        ("$5.2 x 5 = $26", False),
        ("10/3 = 3.33", False),
        ("10/3=4", True),
        ("x^2 + 3 = 7", False),
        ("-3 + 5 = 2", False),
        ("2 + 3 = 5 + 1 = 6", False),
        ("$3 \\times 4 = 13$", True),
        ("1,000 + 200 = 1,200", False),
        ("35 questions x 2/5 = 14", False),
        ("no numbers here", False),
        ("2S + 30 = 110", False),  # algebra, not a sum
        ("9**9**9 = 1", False),  # a power is never computed
        # seen in review, each flagged as false before (3 of them in correct kept samples):
        ("4 * 12 = 4 * (10 + 2) = 48", False),  # the right side goes on
        ("2 * 6 = 2 * $6 = $12", False),
        ("5 + 7 = 5 + \\frac{14}{2} = 12", False),
        ("1/4 = 25%", False),  # a percentage
        ("7/4 = 1 3/4 cups", False),  # mixed numbers, either side
        ("1 1/2 * 4 = 6", False),
        ("2/3 = 0.666...", False),  # a repeating decimal
        ("1{,}000 + 500 = 1{,}500", False),  # LaTeX's thousands separator
        ("−3 + 5 = 2", False),  # a Unicode minus
        ("1 000 + 500 = 1 500", False),  # a space as thousands separator
        ("2,5 + 1 = 3,5", False),  # a decimal comma
        ("12 / 4 = 4\n- 3 more", True),  # a list on the next line does not hide a line's sum
        ("1{,}000 + 500 = 1{,}600", True),
        ("0.05 \\times 200,0000 = 10,000", True),  # a misplaced separator is still one
        ("8 * 7 = 54 (not 56)", True),  # diff review: a remark or words after it hid the slip
        ("4 * 12 = 52 / month", True),
        ("4 * 12 = 52 - that is all", True),
        ("First 2 + 2 = 4.\n\nThen 4 * 3 = 11.", True),  # a whole solution: any of its steps
        # chains: a middle link is checked, unless the next side starts from the value so far
        ("75 * 2 * 4 = 75 * 2 = 150", True),  # seen in a kept wrong sample: the 4 went missing
        ("85 \\times 25 = 225 \\times 5 = 1125", True),
        ("75 * 2 * 4 = 150 * 4 = 600", False),
        ("3 * 4 = 12 + 5 = 17", False),  # a running total
        ("20 + 0.25 * 20 = 40 + 5 = 45", True),  # a running total from a wrong value
        ("10 / 3 * 3 = 3.33 * 3 = 10", False),  # rounding only
        ("2x + 3 = 5 + 3 = 8", False),  # algebra on the left
        # diff review: legitimate or rounded lines the chain check first flagged
        ("3 + 4 * 2 = 7 * 2 = 14", False),  # meant from left to right
        ("3 * 4 = 5 + 12 = 17", False),  # a running total, terms swapped
        ("15 / 40 * 100 = 0.38 * 100 = 38%", False),  # a rounded number, multiplied
    ],
)
def test_has_wrong_arithmetic(text: str, wrong: bool) -> None:
    assert has_wrong_arithmetic(text) is wrong


def test_calculator_capped_caps_only_the_wrong_steps() -> None:
    assert calculator_capped(["4 * 12 = 52", "so 48"], [0.9, 0.8], 0.05) == [0.05, 0.8]


def test_a_sample_with_a_wrong_sum_votes_last() -> None:
    # Two samples reach 7 through a wrong sum, one reaches 8 with sums that hold.
    tree = {
        "4 * 3 = 11, so \\boxed{7}": {},
        "4 + 4 = 8, so \\boxed{8}": {},
        "6 * 2 = 14, so \\boxed{7}": {},
    }
    checked = majority("q", FakeGenerator(tree_policy(tree)), None, SearchConfig(n=3))
    assert checked.answer == "8" and checked.votes == {"8": 1.0}
    assert [c.arithmetic_error for c in checked.candidates] == [True, False, True]
    plain = majority("q", FakeGenerator(tree_policy(tree)), None, SearchConfig(n=3, check_arithmetic=False))
    assert plain.answer == "7" and not any(c.arithmetic_error for c in plain.candidates)


def test_when_every_answer_has_a_wrong_sum_they_all_vote() -> None:
    tree = {"1 + 1 = 3, \\boxed{3}": {}, "2 * 2 = 5, \\boxed{5}": {}, "1 + 1 = 3 \\boxed{3}.": {}}
    result = majority("q", FakeGenerator(tree_policy(tree)), None, SearchConfig(n=3))
    assert result.answer == "3" and result.votes == {"3": 2.0, "5": 1.0}


@pytest.mark.parametrize(
    "text, wrong",
    [
        ("2/3 = 0.666", False),  # cut
        ("Each pays $10 / 3 = $3.34.", False),  # rounded up
        ("10 / 4 = 2.6", True),  # a value the decimals hold is written as it is
        ("from 9 - 5 = 8 hours", False),  # clock times
        ("The profit from 12 * 5 = 70 dollars.", True),  # not clock times (diff review)
        ("2.344 + 1 = 3.35", True),  # the allowance is a division's (diff review)
        ("14 / 3 = 4", True),  # a whole number still: on the committed samples only wrong ones
    ],
)
def test_rounding_a_division_the_decimals_cannot_hold(text, wrong):
    assert has_wrong_arithmetic(text) is wrong
