"""Selection helpers (select.py) and majority voting, on hand-made candidates and fake models."""

from __future__ import annotations

import pytest
from fakes import FakeGenerator, FakeScorer, tree_policy

from edgetts.search import run_search
from edgetts.search.base import Candidate, SearchConfig, SolutionPath
from edgetts.search.majority import majority
from edgetts.search.select import (
    group_by_answer,
    pick_best,
    pick_by_vote,
    score_paths,
    to_candidate,
)


def cand(answer: str | None, score: float | None = None) -> Candidate:
    return Candidate(
        text=f"... {answer}",
        answer=answer,
        score=score,
        step_scores=[],
        n_tokens=1,
        stop_reason="eos",
    )


def one_step_tree(*finals: str) -> dict:
    """A script whose root branches straight into the given finished one-step solutions."""
    return {text: {} for text in finals}


# --- to_candidate / group_by_answer -----------------------------------------------------------


def test_to_candidate_extracts_normalises_and_aggregates():
    path = SolutionPath(steps=["x = 3\n", "so \\boxed{18.0}"], finished=True, stop_reason="eos")
    path.scores, path.n_tokens = [0.5, 0.8], 7
    c = to_candidate(path, "min")
    assert (c.answer, c.score, c.step_scores, c.n_tokens) == ("18", 0.5, [0.5, 0.8], 7)
    assert to_candidate(path, "prod").score == pytest.approx(0.4)
    assert to_candidate(SolutionPath(), "last").answer is None
    assert to_candidate(SolutionPath(steps=["no answer"]), "last").score is None


def test_group_by_answer_merges_equivalent_answers_in_first_seen_order():
    cands = [cand("18"), cand(None), cand("\\$18"), cand("\\frac{1}{2}"), cand("0.5"), cand("7")]
    assert group_by_answer(cands) == [[0, 2], [3, 4], [5]]


# --- pick_by_vote / pick_best ------------------------------------------------------------------


def test_majority_vote_counts_and_best_member():
    cands = [cand("1", 0.2), cand("2", 0.9), cand("1", 0.6), cand("1", 0.1)]
    chosen, votes = pick_by_vote(cands, lambda c: 1.0)
    assert votes == {"1": 3.0, "2": 1.0}
    assert chosen is cands[2]  # best-scored member of the winning group


def test_vote_tie_goes_to_group_with_best_member_then_first_seen():
    cands = [cand("1", 0.3), cand("2", 0.8), cand("1", 0.4), cand("2", 0.1)]
    chosen, _ = pick_by_vote(cands, lambda c: 1.0)
    assert chosen.answer == "2"
    unscored = [cand("1"), cand("2"), cand("2"), cand("1")]
    chosen, votes = pick_by_vote(unscored, lambda c: 1.0)
    assert votes == {"1": 2.0, "2": 2.0}
    assert chosen is unscored[0]


def test_weighted_vote_beats_single_best_path():
    cands = [cand("1", 0.9), cand("2", 0.6), cand("2", 0.5)]
    chosen, votes = pick_by_vote(cands, lambda c: c.score)
    assert chosen.answer == "2" and votes == pytest.approx({"1": 0.9, "2": 1.1})
    assert pick_best(cands) is cands[0]


def test_all_unparseable_answers_give_none_and_best_scored_text():
    cands = [cand(None, 0.2), cand(None, 0.7), cand(None, 0.7)]
    chosen, votes = pick_by_vote(cands, lambda c: 1.0)
    assert chosen is cands[1] and votes == {}
    assert pick_by_vote([], lambda c: 1.0) == (None, {})


def test_pick_best_prefers_parseable_and_first_on_ties():
    cands = [cand(None, 0.99), cand("3", 0.5), cand("4", 0.5)]
    assert pick_best(cands) is cands[1]
    assert pick_best([]) is None


# --- score_paths --------------------------------------------------------------------------------


class ListScorer:
    """Returns fixed scores whatever it is asked, to break the one-score-per-step contract."""

    def __init__(self, scores: list[list[float]]) -> None:
        self.scores = scores

    def score(self, question: str, paths: list[SolutionPath]) -> list[list[float]]:
        return self.scores


def test_score_paths_stores_scores_per_step():
    paths = [SolutionPath(steps=["a", "b"]), SolutionPath(steps=["c"])]
    score_paths(FakeScorer({"a": 0.1, "b": 0.2, "c": 0.3}), "q", paths)
    assert [p.scores for p in paths] == [[0.1, 0.2], [0.3]]


@pytest.mark.parametrize(
    "scores, message",
    [
        ([[0.1, 0.2]], "scores for 1 paths, expected 2"),
        ([[0.1, 0.2], [0.3, 0.4]], "2 scores for path 1, which has 1 steps"),
        ([[0.1], [0.3]], "1 scores for path 0, which has 2 steps"),
    ],
)
def test_score_paths_rejects_wrong_counts(scores, message):
    paths = [SolutionPath(steps=["a", "b"]), SolutionPath(steps=["c"])]
    with pytest.raises(ValueError, match=message):
        score_paths(ListScorer(scores), "q", paths)


def test_score_paths_skips_empty_batches():
    score_paths(ListScorer([]), "q", [])  # no call, no error


# --- majority -----------------------------------------------------------------------------------


def test_majority_most_common_answer_and_release():
    gen = FakeGenerator(tree_policy(one_step_tree("\\boxed{1}", "\\boxed{2}", "so \\boxed{2.0}")))
    result = majority("q", gen, None, SearchConfig(n=3))
    assert (result.answer, result.votes) == ("2", {"2": 2.0, "1": 1.0})
    assert not result.cut_short and gen.alive == set()


def test_majority_tie_goes_to_first_sample_without_scorer_and_best_member_with_one():
    tree = one_step_tree("A \\boxed{1}", "B \\boxed{2}", "C \\boxed{2}", "D \\boxed{1}")
    assert majority("q", FakeGenerator(tree_policy(tree)), None, SearchConfig(n=4)).answer == "1"
    scorer = FakeScorer({"B \\boxed{2}": 0.9})
    result = majority("q", FakeGenerator(tree_policy(tree)), scorer, SearchConfig(n=4))
    assert result.answer == "2" and result.chosen.score == 0.9


def test_majority_all_unparseable():
    gen = FakeGenerator(tree_policy(one_step_tree("no idea", "still lost")))
    result = majority("q", gen, None, SearchConfig(n=2))
    assert result.answer is None and result.votes == {} and result.chosen.text == "no idea"


def test_majority_rejects_wrong_scorer_counts():
    gen = FakeGenerator(tree_policy(one_step_tree("\\boxed{1}")))
    with pytest.raises(ValueError, match="expected 2"):
        majority("q", gen, ListScorer([[0.5]]), SearchConfig(n=2))


def test_run_search_majority_counts_costs():
    gen = FakeGenerator(tree_policy(one_step_tree("so \\boxed{1}")))
    result = run_search("majority", "what is one", gen, FakeScorer(), SearchConfig(n=2))
    assert result.counters["tokens_prefilled"] == 3
    assert result.counters["tokens_decoded"] == 4
    assert result.counters["prm_calls"] == 1 and result.counters["prm_steps_scored"] == 2
    assert {"policy_s", "prm_s", "other_s", "wall_s"} <= set(result.counters)


def test_cut_path_with_unfinished_box_loses_to_a_real_answer():
    # seen: "\(\boxed" from a path cut at the token limit won a tie against 5
    cut = SolutionPath(steps=["So the final answer is \\(\\boxed"], finished=True, stop_reason="max_tokens")
    done = SolutionPath(steps=["2 + 3 = 5"], finished=True, stop_reason="eos")
    candidates = [to_candidate(cut), to_candidate(done)]
    assert candidates[0].answer is None
    chosen, votes = pick_by_vote(candidates, lambda c: 1.0)
    assert chosen.answer == "5" and votes == {"5": 1.0}


def test_deadline_cut_paths_vote_only_when_nothing_better():
    # seen: paths cut by a deadline voted "3," (the last number they were writing)
    cut = [SolutionPath(steps=["We have 3, then"], stop_reason="deadline") for _ in range(2)]
    done = SolutionPath(steps=["It is 7"], finished=True, stop_reason="eos")
    guesses = [to_candidate(p) for p in cut]
    assert [(c.answer, c.provisional) for c in guesses] == [("3", True), ("3", True)]
    assert pick_by_vote([*guesses, to_candidate(done)], lambda c: 1.0)[1] == {"7": 1.0}
    assert pick_by_vote(guesses, lambda c: 1.0)[1] == {"3": 2.0}  # anytime: the best guess


def test_a_step_score_that_is_not_a_number_counts_as_the_worst():
    """Diff review: min() of a list holding NaN depended on the order of the steps."""
    from edgetts.search.base import aggregate

    nan = float("nan")
    assert aggregate([nan, 0.9], "min") == aggregate([0.9, nan], "min") == 0.0
    assert aggregate([0.9, nan], "last") == 0.0 and aggregate([0.5, nan], "prod") == 0.0
