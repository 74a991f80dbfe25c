"""tools/bench_code.py and tools/bench_pot.py: picks recomputed from kept rows, held-out guard."""

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import bench_code  # noqa: E402
import bench_pot  # noqa: E402


def cand(hidden: bool, outputs: list[str], visible=(True,), generated=(True,), tokens: int = 10) -> dict:
    return {
        "n_tokens": tokens,
        "runnable": True,
        "visible": list(visible),
        "generated": list(generated),
        "outputs": outputs,
        "hidden": hidden,
    }


ROW = {
    "task_id": "HumanEval/3",
    "n": 4,
    "tokens_tests": 50,
    "seconds": 10.0,
    "candidates": [
        cand(False, ["a"], visible=(False,)),  # fails the docstring example
        cand(True, ["b"]),
        cand(False, ["a"], visible=(False,)),
        cand(True, ["b"]),
    ],
}


def test_pick_recomputed_at_each_n() -> None:
    assert bench_code.pick_correct(ROW, 1, "first") == (False, 10)
    assert bench_code.pick_correct(ROW, 2, "oracle") == (True, 20)
    assert bench_code.pick_correct(ROW, 4, "exec") == (True, 90)  # the test-writing reply counts
    # Without tests the two clusters tie on size: the earliest (wrong) one wins.
    assert bench_code.pick_correct(ROW, 4, "majority") == (False, 90)


def test_heldout_problems_are_refused() -> None:
    args = argparse.Namespace(ids="80-83", heldout=False)
    with pytest.raises(SystemExit, match="held out"):
        bench_code.run(args)
    assert bench_code.parse_ids("0-2,5") == [0, 1, 2, 5]


def test_pot_vote_ignores_programs_that_failed() -> None:
    row = {
        "gold": "18",
        "candidates": [
            {"answer": None, "n_tokens": 5},
            {"answer": "18", "n_tokens": 7},
            {"answer": "9", "n_tokens": 6},
            {"answer": "18", "n_tokens": 8},
        ],
    }
    assert bench_pot.vote(row, 1) == (False, 5)
    assert bench_pot.vote(row, 4) == (True, 26)


def test_cot_and_pot_vote_together_from_the_first_of_each() -> None:
    """Prose says 7 twice, then every sample something else; the programs say 9 three times,
    then fail: together 9 outvotes 7, prose alone picks 7."""
    others = [{"answer": str(100 + i), "n_tokens": 10} for i in range(14)]
    prose = {"0": {"candidates": [{"answer": "7", "n_tokens": 10}] * 2 + others}}
    programs = [{"answer": "9", "n_tokens": 4}] * 3 + [{"answer": None, "n_tokens": 4}] * 13
    pot = {"0": {"gold": "9", "candidates": programs}}
    got = bench_pot.hybrid_configs(pot, prose, ["0"])
    assert got["cot+pot majority 4+4"]["0"] == (True, 4 * 10 + 4 * 4)
    assert got["cot+pot majority 8+8"]["0"] == (True, 8 * 10 + 8 * 4)
    assert got["kept prose majority N=8"]["0"] == (False, 80)
