"""Best-of-N, weighted best-of-N, beam search and DVTS on scripted fake models: exact picks,
round-by-round schedules, the KV-sharing contract, deadlines and bad input."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
from fakes import FakeGenerator, FakeScorer, n_tokens, random_policy, tree_policy

from edgetts.search import NEEDS_SCORER, STRATEGIES, run_search
from edgetts.search.base import SearchConfig, SolutionPath
from edgetts.search.beam_search import beam_search, best_scored, keep_best_distinct
from edgetts.search.best_of_n import best_of_n, weighted_best_of_n
from edgetts.search.dvts import best_first, deal, dvts

SCORED = ["best_of_n", "weighted_best_of_n", "beam_search", "dvts"]


def try_score(step: str) -> float:
    """Score random_policy steps by their random number, so every round has a clear ranking."""
    words = step.split()
    return int(words[-1]) / 1000 if "try" in words else 0.5


def random_run(strategy: str, config: SearchConfig, **policy):
    gen = FakeGenerator(random_policy(**policy))
    scorer = FakeScorer(rule=try_score)
    return STRATEGIES[strategy]("q", gen, scorer, config), gen, scorer


# --- best-of-N ----------------------------------------------------------------------------------

ONE_STEP = {"A \\boxed{1}": {}, "B \\boxed{2}": {}, "C \\boxed{2.0}": {}, "D \\boxed{3}": {}}
ONE_STEP_SCORES = {
    "A \\boxed{1}": 0.9,
    "B \\boxed{2}": 0.6,
    "C \\boxed{2.0}": 0.5,
    "D \\boxed{3}": 0.2,
}


def test_best_of_n_picks_top_scored_path():
    gen = FakeGenerator(tree_policy(ONE_STEP))
    result = best_of_n("q", gen, FakeScorer(ONE_STEP_SCORES), SearchConfig(n=4))
    assert result.answer == "1" and result.chosen.score == 0.9
    assert [c.answer for c in result.candidates] == ["1", "2", "2", "3"]
    assert result.votes == {} and not result.cut_short
    assert gen.calls[0].n_each == 4 and gen.calls[0].to_end and gen.alive == set()


def test_weighted_best_of_n_sums_scores_per_answer():
    gen = FakeGenerator(tree_policy(ONE_STEP))
    result = weighted_best_of_n("q", gen, FakeScorer(ONE_STEP_SCORES), SearchConfig(n=4))
    assert result.answer == "2" and result.chosen.score == 0.6  # best member of the group
    assert result.votes == pytest.approx({"1": 0.9, "2": 1.1, "3": 0.2})
    assert result.strategy == "weighted_best_of_n"


# Three two-step solutions whose ranking flips with the aggregation:
# x: [0.3, 0.9] last .9 min .3 prod .27;  y: [0.8, 0.8] .8 .8 .64;  w: [1.0, 0.7] .7 .7 .7
AGG_TREE = {"x1": {"x2 \\boxed{1}": {}}, "y1": {"y2 \\boxed{2}": {}}, "w1": {"w2 \\boxed{3}": {}}}
AGG_SCORES = {
    "x1": 0.3, "x2 \\boxed{1}": 0.9,
    "y1": 0.8, "y2 \\boxed{2}": 0.8,
    "w1": 1.0, "w2 \\boxed{3}": 0.7,
}  # fmt: skip


@pytest.mark.parametrize("agg, answer", [("last", "1"), ("min", "2"), ("prod", "3")])
def test_aggregation_changes_the_pick(agg, answer):
    gen = FakeGenerator(tree_policy(AGG_TREE))
    result = best_of_n("q", gen, FakeScorer(AGG_SCORES), SearchConfig(n=3, agg=agg))
    assert result.answer == answer


@pytest.mark.parametrize("agg, kept", [("last", "x"), ("min", "y"), ("prod", "w")])
def test_aggregation_steers_pruning(agg, kept):
    # Beam search's and DVTS's selection both rank by the aggregated score of the whole path.
    for select in (
        lambda gen, paths: keep_best_distinct(gen, paths, 1, agg),
        lambda gen, paths: best_first(gen, paths, [], agg),
    ):
        gen = FakeGenerator(tree_policy({"x": {"x2": {}}, "y": {"y2": {}}, "w": {"w2": {}}}))
        paths = gen.extend([gen.root("q")], 3)
        for path, scores in zip(paths, ([0.3, 0.9], [0.8, 0.8], [1.0, 0.7]), strict=True):
            path.scores = scores
        assert select(gen, paths)[0].steps == [kept]


def test_keep_best_distinct_gives_a_duplicate_beams_place_to_the_next_distinct_one():
    gen = FakeGenerator(tree_policy({"same": {}, "other": {}, "third": {}}))
    paths = gen.extend([gen.root("q")], 3)
    paths[1].steps = list(paths[0].steps)  # two beams wrote the same step
    for path, score in zip(paths, (0.9, 0.8, 0.1), strict=True):
        path.scores = [score]
    kept = keep_best_distinct(gen, paths, 2, "last")
    assert [p.scores for p in kept] == [[0.9], [0.1]]
    assert len(keep_best_distinct(gen, kept, 5, "last")) == 2  # fewer distinct paths than places: fewer kept


# --- beam search --------------------------------------------------------------------------------

# Round 1: a .9, b .1, c .8, d .2 -> a, c survive (n=4, width 2).
# Round 2: a1 .3, a2 .95, c1 .7, c2 .1 -> a2, c1 survive. Round 3: children finish.
BEAM_TREE = {
    "a": {
        "a1": {"a1 end \\boxed{1}": {}},
        "a2": {"a2 end \\boxed{2}": {}, "a2 alt \\boxed{4}": {}},
    },
    "b": {"b1 \\boxed{9}": {}},
    "c": {"c1": {"c1 end \\boxed{3}": {}, "c1 alt \\boxed{2}": {}}, "c2": {"c2 \\boxed{9}": {}}},
    "d": {"d1 \\boxed{9}": {}},
}
BEAM_SCORES = {
    "a": 0.9, "b": 0.1, "c": 0.8, "d": 0.2,
    "a1": 0.3, "a2": 0.95, "c1": 0.7, "c2": 0.1,
    "a2 end \\boxed{2}": 0.5, "a2 alt \\boxed{4}": 0.9,
    "c1 end \\boxed{3}": 0.6, "c1 alt \\boxed{2}": 0.55,
}  # fmt: skip


def test_beam_search_keeps_top_n_over_m_and_expands_each_m_times():
    gen = FakeGenerator(tree_policy(BEAM_TREE))
    config = SearchConfig(n=4, beam_width=2, weighted_pick=False)
    result = beam_search("q", gen, FakeScorer(BEAM_SCORES), config)
    assert [(c.parents, c.n_each, c.to_end) for c in gen.calls] == [
        ([()], 4, False),
        ([("a",), ("c",)], 2, False),
        ([("a", "a2"), ("c", "c1")], 2, False),
    ]
    assert sorted(c.answer for c in result.candidates) == ["2", "2", "3", "4"]
    assert result.answer == "4" and result.chosen.step_scores == [0.9, 0.95, 0.9]
    assert not result.cut_short and gen.alive == set() and gen.roots == 1


def test_beam_search_weighted_pick_sums_equal_answers():
    # the default: the N finished beams vote with their scores, as DVTS's leaves do
    gen = FakeGenerator(tree_policy(BEAM_TREE))
    result = beam_search("q", gen, FakeScorer(BEAM_SCORES), SearchConfig(n=4, beam_width=2))
    assert result.answer == "2" and result.votes == pytest.approx({"2": 1.05, "4": 0.9, "3": 0.6})


@pytest.mark.parametrize("strategy", ["beam_search", "dvts"])
def test_a_tree_search_breaks_ties_by_the_last_step(strategy):
    """Under "min" two children scoring above their parent both keep the parent's score and tie.
    Seen in review: the earliest-made one grew, whatever its own step scored; now the better
    step grows, as it does ranked by the last step (search-and-learn's rule)."""
    tree = {"p": {}, "q": {"q a": {"q a \\boxed{1}": {}}, "q b": {"q b \\boxed{2}": {}}}}
    scores = {"p": 0.3, "q": 0.6, "q a": 0.7, "q b": 0.9}
    for rank in ("min", "last"):
        gen = FakeGenerator(tree_policy(tree))
        config = SearchConfig(n=2, beam_width=2, agg="min", rank_agg=rank, max_steps=3)
        run_search(strategy, "q", gen, FakeScorer(scores), config)
        assert gen.calls[2].parents == [("q", "q b")], (rank, gen.calls)
    with pytest.raises(ValueError, match="unknown ranking aggregation 'best'"):
        SearchConfig(rank_agg="best").validate()


def test_beam_search_ranks_beams_of_other_parents_by_rank_agg():
    """Across parents "min" and "last" differ: y1's step is the best, its parent the worst."""
    end = {"end \\boxed{1}": {}}
    tree = {"x": {"x1": end, "x2": end}, "y": {"y1": end, "y2": end}}
    scores = {"x": 0.9, "y": 0.5, "x1": 0.85, "x2": 0.95, "y1": 0.97, "y2": 0.45}
    for rank, kept in (("min", [("x", "x1"), ("x", "x2")]), ("last", [("x", "x2"), ("y", "y1")])):
        gen = FakeGenerator(tree_policy(tree))
        config = SearchConfig(n=4, beam_width=2, agg="min", rank_agg=rank, max_steps=3)
        beam_search("q", gen, FakeScorer(scores), config)
        assert sorted(gen.calls[2].parents) == kept, (rank, gen.calls)


def test_beam_search_schedule_on_random_tree():
    n, width, max_steps = 8, 2, 4
    config = SearchConfig(n=n, beam_width=width, max_steps=max_steps)
    result, gen, scorer = random_run("beam_search", config, p_finish=0.0, max_depth=7)
    # Step rounds: N from the root, then N/M survivors expanded M times each...
    assert [(len(c.parents), c.n_each) for c in gen.calls[:max_steps]] == [(1, n)] + [(n // width, width)] * (
        max_steps - 1
    )
    # ...and each round's survivors are exactly the top N/M of what the PRM just scored.
    for scored, call in zip(scorer.seen[: max_steps - 1], gen.calls[1:max_steps], strict=True):
        ranked = sorted(scored, key=lambda steps: -try_score(steps[-1]))
        assert sorted(call.parents) == sorted(ranked[: n // width])
    # At max_steps all N live beams are completed, one completion each, then scored.
    last = gen.calls[max_steps]
    assert (len(last.parents), last.n_each, last.to_end) == (n, 1, True)
    assert len(result.candidates) == n and all(c.answer for c in result.candidates)
    assert gen.alive == set() and gen.peak_alive <= n


@pytest.mark.parametrize("strategy", ["beam_search", "dvts"])
def test_tokens_count_shared_prefixes_once(strategy):
    n, width, max_steps, depth = 4, 2, 3, 6
    config = SearchConfig(n=n, beam_width=width, max_steps=max_steps)
    result, gen, _ = random_run(strategy, config, p_finish=0.0, max_depth=depth)
    step, final = n_tokens("step 1 try 1\n"), n_tokens("so the answer is \\boxed{1}")
    expected = n * max_steps * step + n * ((depth - max_steps - 1) * step + final)
    assert gen.counters.tokens_decoded == expected
    # The prompt once, and no step decoded twice: survivors' prefixes were never re-extended.
    assert gen.tokens_total == expected + n_tokens("q")
    assert all(c.n_tokens == (depth - 1) * step + final for c in result.candidates)


def test_beam_search_keeps_finished_beams_aside():
    tree = {
        "early \\boxed{7}": {},
        "s": {"s1 \\boxed{8}": {}},
        "t": {"t1": {"t2 \\boxed{9}": {}}},
        "u": {"u1 \\boxed{8}": {}},
    }
    scores = {"early \\boxed{7}": 0.99, "s": 0.9, "t": 0.8, "u": 0.1, "s1 \\boxed{8}": 0.3}
    gen = FakeGenerator(tree_policy(tree))
    config = SearchConfig(n=4, beam_width=2, max_steps=10, weighted_pick=False)
    result = beam_search("q", gen, FakeScorer(scores), config)
    # The early finisher is never extended again; s and t survive among the unfinished.
    assert gen.calls[1].parents == [("s",), ("t",)]
    assert all(("early \\boxed{7}",) not in c.parents for c in gen.calls)
    assert result.answer == "7" and result.candidates[0].answer == "7"
    # s1, s1 and the early one finish: t's children go on until N=4 have finished.
    assert len(result.candidates) >= 4 and gen.alive == set()


def test_beam_search_keeps_n_beams_a_round_when_fewer_survive():
    # search-and-learn refills its active beams to N every iteration: fewer distinct survivors
    # share the N new beams instead of the search narrowing for good
    same_start = {"same": {"x": {"x \\boxed{1}": {}}, "y": {"y \\boxed{2}": {}}}}
    gen = FakeGenerator(tree_policy(same_start))
    beam_search("q", gen, FakeScorer(default=0.5), SearchConfig(n=8, beam_width=2, max_steps=2))
    assert [(c.parents, c.n_each) for c in gen.calls[:2]] == [([()], 8), ([("same",)], 8)]
    three_starts = {k: {f"{k}1 \\boxed{{1}}": {}} for k in ("a", "b", "c")}
    gen = FakeGenerator(tree_policy(three_starts))
    beam_search("q", gen, FakeScorer(default=0.5), SearchConfig(n=8, beam_width=2))
    # 3 distinct survivors (of N/M = 4 kept): 3 + 3 + 2 children, the first ones one more
    assert sorted((c.parents, c.n_each) for c in gen.calls[1:]) == [([("a",), ("b",)], 3), ([("c",)], 2)]
    assert gen.alive == set() and gen.peak_alive <= 8


def test_beam_search_without_refill_grows_m_beams_per_survivor():
    same_start = {"same": {"x": {"x \\boxed{1}": {}}, "y": {"y \\boxed{2}": {}}}}
    gen = FakeGenerator(tree_policy(same_start))
    config = SearchConfig(n=8, beam_width=2, max_steps=2, beam_refill=False)
    beam_search("q", gen, FakeScorer(default=0.5), config)
    # one distinct survivor of the 8 first steps grows beam_width (2) beams, not 8
    assert [(c.parents, c.n_each) for c in gen.calls[:2]] == [([()], 8), ([("same",)], 2)]
    assert gen.alive == set()


def test_beam_search_picks_among_the_n_best_finished_beams():
    """A last round can finish more beams than N: like search-and-learn (sort_completed), only
    the N best-scored vote; here the surplus low-scored ones would have turned the vote to 7."""
    tree = {
        "e \\boxed{7}": {},
        "a": {"a1 \\boxed{5}": {}, "a2 \\boxed{5}": {}},
        "b": {"b1 \\boxed{7}": {}, "b2 \\boxed{7}": {}},
        "c": {"c1 \\boxed{9}": {}},
    }
    scores = {"e \\boxed{7}": 0.9, "a": 0.8, "b": 0.7, "c": 0.1}
    scores |= {"a1 \\boxed{5}": 0.6, "a2 \\boxed{5}": 0.6, "b1 \\boxed{7}": 0.2, "b2 \\boxed{7}": 0.2}
    gen = FakeGenerator(tree_policy(tree))
    config = SearchConfig(n=4, beam_width=2, weighted_pick=True)
    result = beam_search("q", gen, FakeScorer(scores), config)
    assert len(result.candidates) == 4  # of the 5 that finished
    assert result.answer == "5" and result.votes == pytest.approx({"5": 1.2, "7": 1.1})


def test_the_n_best_finished_beams_put_answered_ones_first():
    """Seen in review: ranking by score alone could drop the only beam with an answer for
    better-scored ones that ran out of tokens without one."""

    def beam(text: str, score: float, stop: str = "eos") -> SolutionPath:
        return SolutionPath(steps=[text], finished=True, stop_reason=stop, scores=[score])

    cut = [beam("so the total is", 0.9, "max_tokens"), beam("and then we add", 0.8, "max_tokens")]
    answered = [beam("so \\boxed{3}", 0.1), beam("hence \\boxed{4}", 0.05)]
    assert best_scored([*cut, *answered], 2, "last") == answered
    assert best_scored([*cut, *answered], 3, "last") == [cut[0], *answered]  # then by score


@pytest.mark.parametrize("weighted", [True, False])
def test_the_n_best_finished_beams_keep_one_whose_sums_hold(weighted):
    """Seen in review: the N best were cut by score before the arithmetic check, so the only
    beam whose sums hold was gone and a beam writing 2 + 2 = 5 answered."""
    wrong1, wrong2, right = "2 + 2 = 5 so \\boxed{5}", "4 + 4 = 9 so \\boxed{9}", "3 + 3 = 6 so \\boxed{6}"
    tree = {"s\n": {wrong2: {}, right: {}}, wrong1: {}}
    scores = {"s": 0.5, wrong1: 0.9, wrong2: 0.8, right: 0.7}
    config = SearchConfig(n=2, beam_width=1, weighted_pick=weighted)
    result = beam_search("q", FakeGenerator(tree_policy(tree)), FakeScorer(scores), config)
    assert result.answer == "6", [(c.answer, c.score) for c in result.candidates]
    unchecked = replace(config, check_arithmetic=False)  # every answer votes: the best-scored wins
    assert beam_search("q", FakeGenerator(tree_policy(tree)), FakeScorer(scores), unchecked).answer == "5"


def test_beam_search_stops_when_n_beams_finished():
    gen = FakeGenerator(tree_policy(ONE_STEP))
    config = SearchConfig(n=4, beam_width=2, weighted_pick=False)
    result = beam_search("q", gen, FakeScorer(ONE_STEP_SCORES), config)
    assert len(gen.calls) == 1 and result.answer == "1"


# --- DVTS ---------------------------------------------------------------------------------------

# Subtree 1 = {a, b} scores high, subtree 2 = {c, d} scores low: beam search would keep a and b,
# DVTS keeps the best of each subtree: a and c.
DVTS_TREE = {
    "a": {"a1": {"a1 \\boxed{1}": {}}, "a2 \\boxed{1}": {}},
    "b": {"b1 \\boxed{5}": {}},
    "c": {"c1": {"c1 \\boxed{2}": {}}, "c2": {"c2 \\boxed{2}": {}}},
    "d": {"d1 \\boxed{5}": {}},
}


def dvts_scores(a: float = 0.9, b: float = 0.8) -> dict[str, float]:
    return {
        "a": a, "b": b, "c": 0.2, "d": 0.1,
        "a1": 0.7, "a2 \\boxed{1}": 0.3, "c1": 0.1, "c2": 0.4,
        "a1 \\boxed{1}": 0.6, "c1 \\boxed{2}": 0.5, "c2 \\boxed{2}": 0.45,
    }  # fmt: skip


def grown(gen: FakeGenerator) -> list[tuple[tuple[str, ...], ...]]:
    """The parents of every extend after the first, one tuple per call."""
    return [tuple(c.parents) for c in gen.calls[1:]]


def test_dvts_subtrees_are_independent_in_rounds():
    gen = FakeGenerator(tree_policy(DVTS_TREE))
    config = SearchConfig(n=4, beam_width=2, dvts_rounds=True)
    result = dvts("q", gen, FakeScorer(dvts_scores()), config)
    # One batched extend per round, best child of each subtree, M children each.
    assert [(c.parents, c.n_each, c.to_end) for c in gen.calls] == [
        ([()], 4, False),
        ([("a",), ("c",)], 2, False),
        ([("a", "a1"), ("c", "c2")], 2, False),
    ]
    # Leaves: a2 (finished in round 2), then a1's and c2's children.
    assert sorted(c.answer for c in result.candidates) == ["1", "1", "1", "2", "2"]
    assert result.answer == "1" and result.votes == pytest.approx({"1": 1.5, "2": 0.9})
    assert not result.cut_short and gen.alive == set()


def test_dvts_subtrees_are_independent_apart():
    gen = FakeGenerator(tree_policy(DVTS_TREE))
    result = dvts("q", gen, FakeScorer(dvts_scores()), SearchConfig(n=4, beam_width=2, dvts_rounds=False))
    # One extension per subtree, submitted on its own: the same parents as the rounds above.
    assert [(c.parents, c.n_each, c.to_end) for c in gen.calls] == [
        ([()], 4, False),
        ([("a",)], 2, False),
        ([("c",)], 2, False),
        ([("c", "c2")], 2, False),  # c's one-word children came back before a's two-word a2
        ([("a", "a1")], 2, False),
    ]
    assert sorted(c.answer for c in result.candidates) == ["1", "1", "1", "2", "2"]
    assert result.answer == "1" and result.votes == pytest.approx({"1": 1.5, "2": 0.9})
    assert not result.cut_short and gen.alive == set() and gen.in_flight == []


@pytest.mark.parametrize("rounds", [True, False])
@pytest.mark.parametrize("a, b", [(0.05, 0.01), (0.9, 0.95), (0.3, 0.3)])
def test_dvts_one_subtrees_scores_never_prune_another(a, b, rounds):
    gen = FakeGenerator(tree_policy(DVTS_TREE))
    dvts("q", gen, FakeScorer(dvts_scores(a, b)), SearchConfig(n=4, beam_width=2, dvts_rounds=rounds))
    second = [p for call in grown(gen) for p in call][:2]
    assert second[1] == ("c",)  # subtree 2's pick does not depend on subtree 1's scores
    assert second[0] == (("a",) if a >= b else ("b",))


@pytest.mark.parametrize("rounds", [True, False])
def test_dvts_subtree_ends_when_its_best_child_finished(rounds):
    tree = {
        "a \\boxed{1}": {},
        "b": {"b1 \\boxed{2}": {}},
        "c": {"c1 \\boxed{3}": {}},
        "d": {"d1 \\boxed{4}": {}},
    }
    scores = {"a \\boxed{1}": 0.9, "b": 0.5, "c": 0.6, "d": 0.1}
    gen = FakeGenerator(tree_policy(tree))
    # M first steps to each subtree in order (no dealing, which would set the finished one apart)
    config = SearchConfig(n=4, beam_width=2, dvts_rounds=rounds, dvts_deal=False)
    result = dvts("q", gen, FakeScorer(scores), config)
    # Subtree {a, b} ends at once (a finished and is best), b is released; {c, d} goes on with c.
    assert gen.calls[1].parents == [("c",)] and len(gen.calls) == 2
    assert sorted(c.answer for c in result.candidates) == ["1", "3", "3"]
    assert gen.alive == set()


def test_dvts_schedule_on_random_tree():
    n, width, max_steps = 8, 2, 3
    config = SearchConfig(n=n, beam_width=width, max_steps=max_steps, dvts_rounds=True)
    result, gen, scorer = random_run("dvts", config, p_finish=0.0, max_depth=6)
    assert [(len(c.parents), c.n_each) for c in gen.calls[:max_steps]] == [(1, n)] + [(n // width, width)] * (
        max_steps - 1
    )
    # Each subtree's survivor is the best of its own M children.
    for scored, call in zip(scorer.seen[: max_steps - 1], gen.calls[1:max_steps], strict=True):
        groups = [scored[i : i + width] for i in range(0, n, width)]
        best = [max(g, key=lambda steps: try_score(steps[-1])) for g in groups]
        assert call.parents == best
    assert gen.calls[max_steps].to_end and len(gen.calls[max_steps].parents) == n
    assert len(result.candidates) == n and gen.alive == set() and gen.peak_alive <= n


def test_dvts_schedule_apart_on_random_tree():
    n, width, max_steps = 8, 2, 3
    config = SearchConfig(n=n, beam_width=width, max_steps=max_steps, dvts_rounds=False)
    result, gen, scorer = random_run("dvts", config, p_finish=0.0, max_depth=6)
    # All first steps scored in one call, then one call per subtree as its children come back.
    assert len(scorer.seen[0]) == n and all(len(seen) == width for seen in scorer.seen[1:])
    # Per subtree: max_steps - 1 expansions of its best child, then its M children to the end.
    assert [(len(c.parents), c.n_each, c.to_end) for c in gen.calls[1:]] == (
        [(1, width, False)] * (n // width) * (max_steps - 1) + [(width, 1, True)] * (n // width)
    )
    assert len(result.candidates) == n and gen.alive == set() and gen.peak_alive <= n


# A subtree of one-word steps ({s, t}) next to one of ten-word steps: the short one must not wait.
LONG = "long " * 9 + "step"
SHORT_STEPS = {"s1": {"s2": {"s3 \\boxed{1}": {}}}}
LONG_STEPS = {LONG + "1": {LONG + "2 \\boxed{2}": {}}}
SPEED_TREE = {"s": SHORT_STEPS, "t": SHORT_STEPS, LONG: LONG_STEPS, "other " + LONG: LONG_STEPS}


def test_dvts_short_subtree_grows_while_a_long_one_decodes():
    gen = FakeGenerator(tree_policy(SPEED_TREE))
    config = SearchConfig(n=4, beam_width=2, max_steps=10, dvts_rounds=False)
    result = dvts("q", gen, FakeScorer(), config)
    parents = [call[0] for call in grown(gen)]
    # The short subtree went three steps deep before the long one's second step came back.
    assert parents.index(("s", "s1", "s2")) < parents.index((LONG, LONG + "1"))
    assert sorted(c.answer for c in result.candidates) == ["1", "1", "2", "2"]
    assert gen.alive == set() and gen.in_flight == []
    # In rounds, the short subtree waits for the long one every round.
    gen = FakeGenerator(tree_policy(SPEED_TREE))
    dvts("q", gen, FakeScorer(), replace(config, dvts_rounds=True))
    assert grown(gen)[1] == (("s", "s1"), (LONG, LONG + "1"))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("agg", ["last", "min"])
@pytest.mark.parametrize("p_finish", [0.0, 0.3])  # 0.3: leaves early, subtrees stopped by their share
def test_dvts_apart_picks_as_rounds_when_subtrees_keep_pace(seed, agg, p_finish):
    # random_policy's steps all have the same length, so the subtrees come back together.
    picks = []
    for rounds in (True, False):
        config = SearchConfig(n=8, beam_width=2, max_steps=4, agg=agg, dvts_rounds=rounds)
        result, gen, _ = random_run("dvts", config, seed=seed, p_finish=p_finish, max_depth=8)
        picks.append((result.answer, sorted((c.text, c.score) for c in result.candidates)))
        assert gen.alive == set() and gen.in_flight == []
    assert picks[0] == picks[1]


# Each subtree writes low-scored finished siblings beside a live best child ("a1", "c1").
SHARE_TREE = {
    "a": {"a1": {"a1 end \\boxed{1}": {}}, "ax \\boxed{9}": {}},
    "b \\boxed{9}": {},
    "c": {"c1": {"c1 end \\boxed{2}": {}}, "cx \\boxed{9}": {}},
    "d \\boxed{9}": {},
}
SHARE_SCORES = {"a": 0.9, "c": 0.8, "a1": 0.9, "c1": 0.8, "a1 end \\boxed{1}": 0.7, "c1 end \\boxed{2}": 0.6}


@pytest.mark.parametrize("rounds", [True, False])
def test_dvts_subtree_holding_its_share_of_leaves_completes_its_best_child(rounds):
    """Seen: all subtrees stopped at N leaves in all, so a subtree's best line was left unfinished
    (only a fallback) once the siblings' low-scored leaves added up: the answer was theirs (9)."""
    gen = FakeGenerator(tree_policy(SHARE_TREE))
    scorer = FakeScorer(SHARE_SCORES, default=0.1)
    # in order, so that each subtree starts with a finished sibling beside its live one
    result = dvts("q", gen, scorer, SearchConfig(n=4, beam_width=2, dvts_rounds=rounds, dvts_deal=False))
    # Each subtree holds M = 2 leaves after round 2 (b, ax; d, cx): only its best child goes on,
    # to the end, with no more branching.
    calls = [(c.parents, c.n_each, c.to_end) for c in gen.calls[1:]]
    if rounds:
        assert calls == [([("a",), ("c",)], 2, False), ([("a", "a1"), ("c", "c1")], 1, True)]
    else:
        assert sorted(calls) == [
            ([("a",)], 2, False), ([("a", "a1")], 1, True), ([("c",)], 2, False), ([("c", "c1")], 1, True)
        ]  # fmt: skip
    assert sorted(c.answer for c in result.candidates) == ["1", "2", "9", "9", "9", "9"]
    assert result.answer == "1" and not result.cut_short
    assert gen.leaks() == set() and gen.in_flight == []


def test_dvts_in_rounds_runs_a_stopped_subtree_to_the_end_beside_the_later_rounds():
    tree = {
        "a": {"a1": {"a1 end \\boxed{1}": {}}, "ax \\boxed{9}": {}},
        "b \\boxed{9}": {},
        "c": {"c1": {"c2": {"c3 \\boxed{2}": {}}}},
        "d": {"d1 \\boxed{8}": {}},
    }
    scores = {
        "a": 0.9,
        "c": 0.8,
        "a1": 0.9,
        "c1": 0.8,
        "c2": 0.8,
        "a1 end \\boxed{1}": 0.7,
        "c3 \\boxed{2}": 0.9,
    }
    gen = FakeGenerator(tree_policy(tree))
    config = SearchConfig(n=4, beam_width=2, dvts_deal=False)  # {a, b} and {c, d}, in order
    result = dvts("q", gen, FakeScorer(scores, default=0.1), config)
    # {a, b} holds its 2 leaves (b, ax) after round 2: a1 is submitted to run to the end before
    # {c, d}'s next round, not after its last
    assert [(c.parents, c.to_end) for c in gen.calls[2:]] == [
        ([("a", "a1")], True),
        ([("c", "c1")], False),
        ([("c", "c1", "c2")], False),
    ]
    assert sorted(c.answer for c in result.candidates) == ["1", "2", "2", "9", "9"]
    assert gen.leaks() == set() and gen.in_flight == []


# Subtrees {a, b} and {c, d} end in round 2 with N = 6 leaves in all; {e, f} is still growing.
SLOW_TREE = {
    "a": {"ax \\boxed{9}": {}, "ay \\boxed{9}": {}},
    "b \\boxed{9}": {},
    "c": {"cx \\boxed{9}": {}, "cy \\boxed{9}": {}},
    "d \\boxed{9}": {},
    "e": {"e1": {"e2": {"e3 \\boxed{3}": {}}}},
    "f": {"f1 \\boxed{8}": {}},
}


@pytest.mark.parametrize("rounds", [True, False])
def test_dvts_one_subtrees_leaves_never_stop_another(rounds):
    scores = {"a": 0.9, "c": 0.9, "e": 0.9, "e1": 0.9, "e2": 0.9, "e3 \\boxed{3}": 0.9}
    gen = FakeGenerator(tree_policy(SLOW_TREE))
    config = SearchConfig(n=6, beam_width=2, dvts_rounds=rounds)
    result = dvts("q", gen, FakeScorer(scores, default=0.1), config)
    grew = {parent for call in gen.calls[1:] for parent in call.parents}
    assert {("e",), ("e", "e1"), ("e", "e1", "e2")} <= grew  # e's subtree grew to its own end
    assert result.answer == "3" and not result.cut_short
    assert [c.answer for c in result.candidates].count("3") == 2
    assert gen.leaks() == set() and gen.in_flight == []


@pytest.mark.parametrize("rounds", [True, False])
def test_dvts_deals_distinct_first_steps_to_different_subtrees(rounds):
    """Seen: at temperature 0.3 most first steps repeat, and subtrees dealt copies of one step
    all grew the same line."""
    tree = {"x": {"x \\boxed{1}": {}}, "y": {"y \\boxed{2}": {}}}  # children x, y, x, y
    gen = FakeGenerator(tree_policy(tree))
    scorer = FakeScorer({"x": 0.9, "y": 0.1})
    dvts("q", gen, scorer, SearchConfig(n=4, beam_width=2, dvts_rounds=rounds, dvts_deal=True))
    assert scorer.seen[0] == [("x",), ("y",)]  # the repeats were dropped before scoring
    assert sorted(p for call in gen.calls[1:] for p in call.parents) == [("x",), ("y",)]
    assert gen.leaks() == set() and gen.in_flight == []


@pytest.mark.parametrize("rounds", [True, False])
def test_dvts_without_dealing_gives_each_subtree_m_first_steps_in_order(rounds):
    tree = {"x": {"x \\boxed{1}": {}}, "y": {"y \\boxed{2}": {}}}  # children x, y, x, y
    gen = FakeGenerator(tree_policy(tree))
    scorer = FakeScorer({"x": 0.9, "y": 0.1})
    dvts("q", gen, scorer, SearchConfig(n=4, beam_width=2, dvts_rounds=rounds, dvts_deal=False))
    assert scorer.seen[0] == [("x",), ("y",), ("x",), ("y",)]  # nothing dropped
    assert sorted(p for call in gen.calls[1:] for p in call.parents) == [("x",), ("x",)]  # both grow x
    assert gen.leaks() == set() and gen.in_flight == []


def test_deal_spreads_distinct_steps_evenly_and_repeats_only_to_fill():
    gen = FakeGenerator(tree_policy({s: {"end": {}} for s in "abcdef"}))
    children = gen.extend([gen.root("q")], 8)  # a b c d e f a b
    groups = deal(gen, children, 4)
    assert [[p.steps[0] for p in g] for g in groups] == [["a", "b"], ["c", "d"], ["e"], ["f"]]
    gen = FakeGenerator(tree_policy({"a": {"end": {}}, "b": {"end": {}}}))
    children = gen.extend([gen.root("q")], 8)  # a b a b a b a b
    groups = deal(gen, children, 4)
    assert [[p.steps[0] for p in g] for g in groups] == [["a"], ["b"], ["a"], ["b"]]
    assert len(gen.released) == 4  # the other repeats


def test_deal_keeps_every_finished_first_step():
    """Seen in review: repeats of a one-step solution were dropped like unfinished repeats, so
    its votes went and the weighted pick flipped to a less common answer."""
    unfinished = {"x \\boxed{3}": {}}
    gen = FakeGenerator(
        tree_policy({"so it is \\boxed{7}": {}, "u1": unfinished, "u2": unfinished, "u3": unfinished})
    )
    children = gen.extend([gen.root("q")], 8)  # the solution twice, u1..u3 twice
    groups = deal(gen, children, 4)
    # Seen in review: the finished steps took a subtree's place and an unfinished step was
    # dealt beside one that outscored it, so only 2 of the 4 subtrees grew. Now every subtree
    # grows an unfinished step (a repeat fills the fourth) and the finished ones vote apart.
    assert [[p.steps[0] for p in g] for g in groups] == [
        ["u1"],
        ["u2"],
        ["u3"],
        ["u1"],
        ["so it is \\boxed{7}", "so it is \\boxed{7}"],
    ]
    assert len(gen.released) == 2  # the other repeats of u2 and u3


@pytest.mark.parametrize("rounds", [True, False])
def test_dvts_grows_every_subtree_whatever_finished_first(rounds):
    unfinished = {"x \\boxed{3}": {}}
    tree = {"so it is \\boxed{7}": {}, "u1": unfinished, "u2": unfinished, "u3": unfinished}
    scores = {"so it is \\boxed{7}": 0.9, "u1": 0.5, "u2": 0.5, "u3": 0.5, "x \\boxed{3}": 0.8}
    gen = FakeGenerator(tree_policy(tree))
    config = SearchConfig(n=8, beam_width=2, dvts_rounds=rounds, dvts_deal=True)
    result = dvts("q", gen, FakeScorer(scores), config)
    grown = sorted(p for call in gen.calls[1:] for p in call.parents)
    assert grown == [("u1",), ("u1",), ("u2",), ("u3",)]
    assert result.answer == "3" and result.votes["7"] == pytest.approx(1.8)  # both finished ones vote
    assert gen.leaks() == set() and gen.in_flight == []


def test_dvts_apart_cancel_stops_growing():
    cancel = threading.Event()
    scorer = FakeScorer(rule=try_score)
    calls = []

    def score(question, paths):
        calls.append(len(paths))
        if len(calls) == 3:
            cancel.set()  # a client disconnects while subtrees are under way
        return FakeScorer.score(scorer, question, paths)

    scorer.score = score  # type: ignore[method-assign]
    gen = FakeGenerator(random_policy(p_finish=0.0, max_depth=10**6))
    config = SearchConfig(n=8, beam_width=2, max_steps=1000, cancel=cancel, dvts_rounds=False)
    result = dvts("q", gen, scorer, config)
    # Scored: the first steps, then subtrees 1 and 2 (1 grows again, 2 is cancelled while
    # scored); the three under way come back and are scored, and nothing grows after the cancel.
    assert calls == [8, 2, 2, 2, 2, 2] and len(gen.calls) == 1 + 4 + 1
    assert result.cut_short and result.answer is not None
    assert gen.leaks() == set() and gen.in_flight == []


# --- contract checks across strategies ----------------------------------------------------------


def test_fake_generator_polices_the_contract():
    gen = FakeGenerator(random_policy(p_finish=0.0))
    root = gen.root("q")
    children = gen.extend([root], 2)
    with pytest.raises(AssertionError, match="consumed"):
        gen.extend([root], 1)
    gen.release(children[:1])
    with pytest.raises(AssertionError, match="released"):
        gen.extend(children[:1], 1)
    with pytest.raises(AssertionError, match="released"):
        gen.release(children[:1])
    assert gen.leaks() == {children[1].handle}
    done = gen.extend(children[1:], 1, to_end=True)
    assert done[0].finished and gen.extend(done, 3) == done  # finished parents pass through once
    assert gen.leaks() == set() and gen.alive == {done[0].handle}


@pytest.mark.parametrize("strategy", SCORED + ["majority"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_leaks_and_one_prefill(strategy, seed):
    config = SearchConfig(n=8, beam_width=2, max_steps=4, weighted_pick=bool(seed % 2))
    result, gen, _ = random_run(strategy, config, seed=seed, p_finish=0.35, max_depth=8)
    assert gen.leaks() == set() and gen.alive == set()
    assert gen.roots == 1 and gen.counters.tokens_prefilled == n_tokens("q")
    assert result.answer is not None and result.chosen in result.candidates
    assert all(len(c.step_scores) > 0 for c in result.candidates) or strategy == "majority"


@pytest.mark.parametrize("strategy", SCORED)
def test_run_search_reports_costs(strategy):
    gen, scorer = FakeGenerator(random_policy(max_depth=4)), FakeScorer(rule=try_score)
    result = run_search(strategy, "q", gen, scorer, SearchConfig(n=4, beam_width=2))
    assert result.strategy == strategy and result.answer is not None
    assert result.counters["tokens_decoded"] == gen.counters.tokens_decoded
    assert result.counters["tokens_generated"] == gen.counters.tokens_decoded  # nothing rebuilt
    assert result.counters["prm_calls"] == scorer.counters.calls >= 1


# --- deadlines ----------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", SCORED)
def test_deadline_returns_partial_answer_in_time(strategy):
    deadline_s, slack_s = 0.3, 0.2
    gen = FakeGenerator(random_policy(p_finish=0.0, max_depth=10**6), step_delay_s=0.01)
    config = SearchConfig(n=4, beam_width=2, deadline_s=deadline_s)
    start = time.perf_counter()
    result = STRATEGIES[strategy]("q", gen, FakeScorer(rule=try_score), config)
    assert time.perf_counter() - start < deadline_s + slack_s
    assert result.cut_short and result.answer is not None
    assert gen.alive == set()


def finish_first_policy(prefix: tuple[str, ...], i: int) -> tuple[str, bool]:
    """Child 0 of the root answers at once; everything else rambles on forever."""
    if not prefix and i == 0:
        return "quick \\boxed{5}", True
    return f"step {len(prefix)} try {100 + i}\n", False


@pytest.mark.parametrize("strategy", ["beam_search", "dvts"])
def test_deadline_prefers_finished_candidates(strategy):
    # Steps take 50 ms: the first round's 4th step starts after the 180 ms deadline and is cut.
    gen = FakeGenerator(finish_first_policy, step_delay_s=0.05)
    config = SearchConfig(n=4, beam_width=2, deadline_s=0.18)
    scorer = FakeScorer({"quick \\boxed{5}": 0.01})
    result = STRATEGIES[strategy]("q", gen, scorer, config)
    assert len(gen.calls) == 1 and gen.cut_steps == 1
    assert result.cut_short and result.answer == "5"
    assert [c.answer for c in result.candidates] == ["5"]
    # Past the deadline, with an answer in hand, only finished paths are worth a PRM call.
    assert scorer.seen == [[("quick \\boxed{5}",)]]
    assert gen.alive == set()


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "strategy, config, message",
    [
        ("beam_search", SearchConfig(n=6, beam_width=4), "multiple of beam_width"),
        ("dvts", SearchConfig(n=5, beam_width=2), "multiple of beam_width"),
        ("beam_search", SearchConfig(n=2, beam_width=4), "cannot exceed"),
        ("dvts", SearchConfig(n=4, beam_width=0), "beam_width must be at least 1"),
        ("best_of_n", SearchConfig(n=0), "n must be at least 1"),
        ("weighted_best_of_n", SearchConfig(agg="mean"), "unknown aggregation"),
        ("beam_search", SearchConfig(max_steps=0), "max_steps"),
        ("dvts", SearchConfig(deadline_s=0), "deadline_s"),
    ],
)
def test_bad_config_fails_before_any_work(strategy, config, message):
    gen = FakeGenerator(random_policy())
    with pytest.raises(ValueError, match=message):
        STRATEGIES[strategy]("q", gen, FakeScorer(), config)
    with pytest.raises(ValueError, match=message):
        run_search(strategy, "q", gen, FakeScorer(), config)
    assert gen.roots == 0 and gen.calls == []


@pytest.mark.parametrize("strategy", SCORED)
def test_scorer_is_required(strategy):
    assert strategy in NEEDS_SCORER
    gen = FakeGenerator(random_policy())
    with pytest.raises(ValueError, match="needs a PRM"):
        STRATEGIES[strategy]("q", gen, None, SearchConfig(n=4, beam_width=2))
    with pytest.raises(ValueError, match="needs a PRM"):
        run_search(strategy, "q", gen, None, SearchConfig(n=4, beam_width=2))
    assert gen.roots == 0


def test_unknown_strategy():
    with pytest.raises(ValueError, match="unknown strategy 'beam'"):
        run_search("beam", "q", FakeGenerator(random_policy()), FakeScorer(), SearchConfig())


class OffByOneScorer(FakeScorer):
    """Forgets the last path, or the last step of every path."""

    def __init__(self, drop: str) -> None:
        super().__init__()
        self.drop = drop

    def score(self, question: str, paths: list[SolutionPath]) -> list[list[float]]:
        scores = super().score(question, paths)
        return scores[:-1] if self.drop == "path" else [s[:-1] for s in scores]


@pytest.mark.parametrize("strategy", SCORED)
@pytest.mark.parametrize("drop, message", [("path", "expected 4"), ("step", "which has 1 steps")])
def test_wrong_count_scorer_raises(strategy, drop, message):
    gen = FakeGenerator(random_policy(max_depth=2))
    if strategy.endswith("best_of_n"):
        message = "expected 4" if drop == "path" else "which has [12] steps"
    if strategy == "dvts" and drop == "path":
        message = r"expected \d"  # repeated first steps are dropped before scoring
    with pytest.raises(ValueError, match=message):
        STRATEGIES[strategy]("q", gen, OffByOneScorer(drop), SearchConfig(n=4, beam_width=2))


@pytest.mark.parametrize("strategy", ["majority", "best_of_n", "confidence_vote"])
def test_sample_strategies_sample_as_the_search_says(strategy):
    """Seen: confidence_vote rooted without the search's Sampling (seed, temperature, max_tokens)."""
    from edgetts.search.base import Sampling

    class Recording(FakeGenerator):
        def root(self, question, sampling=None):
            self.sampling = sampling
            return super().root(question, sampling)

    gen = Recording(tree_policy({"x \\boxed{1}": {}}))
    sampling = Sampling(temperature=0.7, seed=11, max_tokens=99)
    if strategy == "confidence_vote":
        gen.extend = _with_confidence(gen.extend)
    run_search(strategy, "q", gen, FakeScorer(), SearchConfig(n=2, sampling=sampling))
    assert gen.sampling == sampling


def _with_confidence(extend):
    def wrapped(*args, **kwargs):
        paths = extend(*args, **kwargs)
        for p in paths:
            p.token_stats = [(-1.0, 1.0, 5.0)] * p.n_tokens
        return paths

    return wrapped


@pytest.mark.parametrize(
    "name, config, fail_at",
    [
        *[("beam_search", SearchConfig(n=8, beam_width=2, max_steps=6), k) for k in (0, 1, 2)],
        *[("dvts", SearchConfig(n=8, beam_width=2, max_steps=6), k) for k in (0, 1, 2)],
        *[("dvts", SearchConfig(n=8, beam_width=2, max_steps=6, dvts_rounds=False), k) for k in (0, 1, 2)],
        ("weighted_best_of_n", SearchConfig(n=8), 0),  # one wave, one call
    ],
)
def test_a_search_whose_prm_fails_holds_no_sequence(name, config, fail_at):
    """Seen in review: beam search leaked 6 sequences, DVTS 2-3, when the PRM raised mid-search
    (a Solver's session frees them; a caller driving a generator itself did not)."""

    class Failing(FakeScorer):
        def score(self, question, paths):
            if self.counters.calls == fail_at:
                raise RuntimeError("PRM failed")
            return super().score(question, paths)

    for seed in range(3):
        gen = FakeGenerator(random_policy(p_finish=0.0, seed=seed))  # nothing ends before the failure
        with pytest.raises(RuntimeError, match="PRM failed"):
            STRATEGIES[name]("q", gen, Failing(rule=try_score), config)
        assert gen.leaks() == set() and gen.in_flight == []


@pytest.mark.parametrize("rounds", [True, False])
@pytest.mark.parametrize("strategy", ["dvts", "beam_search"])
def test_a_search_cut_by_its_deadline_says_so_even_when_a_finished_leaf_is_in(strategy, rounds):
    # Child 1 is still writing its step when the cancel comes: it goes unscored, so it cannot be
    # ranked below the finished child 0, and the search was cut short (DVTS said it was not).
    cancel = threading.Event()

    def policy(prefix, i):
        if prefix == ():
            return ("step one\n", False)
        if i % 2 == 0:
            return ("so the answer is \\boxed{1}", True)
        cancel.set()
        return ("a long second step that is cut\n", False)

    gen = FakeGenerator(policy)
    config = SearchConfig(n=2, beam_width=2, dvts_rounds=rounds, cancel=cancel)
    scorer = FakeScorer({"so the answer is \\boxed{1}": 0.3}, default=0.9)
    result = run_search(strategy, "q", gen, scorer, config)
    assert result.cut_short
    assert result.answer == "1"
    assert not gen.leaks()


@pytest.mark.parametrize("bad", [float("nan"), 1.5, -0.1])
def test_a_score_off_the_protocols_scale_is_refused(bad):
    """Search review: a NaN step score was pruned or not depending on its place in the path."""
    scorer = FakeScorer(rule=lambda step: bad)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        run_search("best_of_n", "q", FakeGenerator(random_policy(0)), scorer, SearchConfig(n=2))
