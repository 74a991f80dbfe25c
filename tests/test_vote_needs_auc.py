"""tools/vote_needs_auc.py: the weighted vote under scores of a chosen pair AUC."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import vote_needs_auc as tool  # noqa: E402


def _problem(answers: list[str], gold: str) -> tuple[list[bool], list[list[int]]]:
    candidates = [{"answer": a, "text": f"so {a}", "correct": a == gold} for a in answers]
    return [c["correct"] for c in candidates], tool.answer_groups(candidates)


def test_a_lone_right_sample_wins_only_with_a_near_perfect_verifier():
    # one right sample against three agreeing wrong ones, twice; a clear majority once
    problems = [
        _problem(["5", "6", "6", "6"], "5"),
        _problem(["7", "8", "8", "8"], "7"),
        _problem(["1"] * 4, "1"),
    ]
    assert round(tool.accuracy(problems, None, 0)) == 33  # majority: the third only
    chance = tool.accuracy(problems, 0.5, 100)
    near_perfect = tool.accuracy(problems, 0.9999, 100)
    assert chance < 50 < 90 < near_perfect


def test_a_slip_votes_only_when_nothing_else_can():
    candidates = [
        {"answer": "48", "text": "4 * 12 = 52, so 48", "correct": True},
        {"answer": "52", "text": "4 * 12 = 48, so 52", "correct": False},
    ]
    assert tool.answer_groups(candidates) == [[1]]


def test_a_tie_for_the_most_votes_counts_as_a_fair_draw():
    assert tool.accuracy([_problem(["5", "5", "6", "6"], "5")], None, 0) == 50.0
