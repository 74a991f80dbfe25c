"""Adaptive sampling: the stopping rules, their waves, and the strategies that sample in them."""

from __future__ import annotations

import itertools
import math
import random
import threading
from dataclasses import replace

import pytest
from fakes import FakeGenerator, FakeScorer, random_policy, tree_policy

from edgetts.search.adaptive import (
    AdaptiveStop,
    Tally,
    leader_probability,
    regularized_beta,
    replay,
    stay_ahead_probability,
)
from edgetts.search.auto import PROBE_N, ComputeOptimalTable, auto
from edgetts.search.base import Deadline, SearchConfig
from edgetts.search.best_of_n import weighted_best_of_n
from edgetts.search.common import score_in_time
from edgetts.search.confidence_vote import confidence_vote
from edgetts.search.majority import majority
from edgetts.search.select import tally_votes, to_candidate
from edgetts.server.schemas import SearchFields
from edgetts.solver import SolveOptions

RULE = AdaptiveStop(threshold=0.95, min_n=4, wave=4)
BETA = AdaptiveStop(threshold=0.95, min_n=4, wave=4, rule="beta")
UNANIMOUS = tree_policy({"x = 2\n": {"so the answer is \\boxed{2}": {}}})


def binomial_beta_tail(v1: int, v2: int) -> float:
    """P(Beta(v1 + 1, v2 + 1) > 1/2) for whole votes: P(Binomial(v1 + v2 + 1, 1/2) <= v1)."""
    n = v1 + v2 + 1
    return sum(math.comb(n, k) for k in range(v1 + 1)) / 2**n


@pytest.mark.parametrize("v1, v2", [(1, 0), (4, 0), (5, 0), (3, 1), (6, 2), (10, 5), (60, 50), (2, 2)])
def test_leader_probability_is_the_exact_beta_tail(v1, v2):
    totals = {"a": float(v1), "b": float(v2)} if v2 else {"a": float(v1)}
    assert leader_probability(Tally(totals, v1 + v2)) == pytest.approx(binomial_beta_tail(v1, v2), abs=1e-12)


def test_regularized_beta_for_real_parameters_matches_integration():
    a, b = 3.3, 1.7
    steps = 200_000  # midpoint rule on the Beta density
    density = lambda x: x ** (a - 1) * (1 - x) ** (b - 1)  # noqa: E731
    norm = math.exp(math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    integral = sum(density((i + 0.5) / steps * 0.5) for i in range(steps)) * 0.5 / steps / norm
    assert regularized_beta(0.5, a, b) == pytest.approx(integral, rel=1e-6)


def test_weights_count_by_their_shares_of_the_voters():
    # 3 voters; weights 0.9 vs 0.1 of the total: as 2.7 votes against 0.3, whatever the scale
    small = leader_probability(Tally({"a": 0.09, "b": 0.01}, 3))
    large = leader_probability(Tally({"a": 90.0, "b": 10.0}, 3))
    assert small == pytest.approx(large)
    assert small == pytest.approx(regularized_beta(0.5, 1.3, 3.7))
    assert leader_probability(Tally({}, 0)) == 0.0


def test_four_agreeing_samples_settle_at_095_three_against_one_do_not():
    assert BETA.settled(Tally({"2": 4.0}, 4), 4, 16)  # 31/32
    assert not BETA.settled(Tally({"2": 3.0, "3": 1.0}, 4), 4, 16)  # 0.81
    assert BETA.settled(Tally({"2": 6.0}, 6), 6, 16)
    assert not AdaptiveStop(min_n=8, rule="beta").settled(Tally({"2": 6.0}, 6), 6, 16)  # below min_n: never


def urn_stay_probability(v1: int, v2: int, rest: int, remaining: int) -> float:
    """The budget rule by brute force: every sequence of the remaining draws from a Polya urn
    with leader, runner-up and rest, each one prior ball, its probability drawn step by step."""
    total = 0.0
    for seq in itertools.product(range(3), repeat=remaining):
        balls, p = [v1 + 1.0, v2 + 1.0, rest + 1.0], 1.0
        for colour in seq:
            p *= balls[colour] / sum(balls)
            balls[colour] += 1.0
        margin = balls[0] - balls[1]
        total += p * (1.0 if margin > 0 else 0.5 if margin == 0 else 0.0)
    return total


@pytest.mark.parametrize(
    "v1, v2, rest, remaining",
    [(4, 0, 0, 4), (3, 1, 0, 4), (2, 1, 1, 5), (2, 2, 0, 3), (3, 0, 3, 6), (1, 0, 0, 1)],
)
def test_budget_rule_is_the_polya_urn_summed_exactly(v1, v2, rest, remaining):
    # the rest: samples without an answer here (other answers weaker than the runner-up count alike)
    tally = Tally({k: w for k, w in {"a": float(v1), "b": float(v2)}.items() if w}, v1 + v2)
    drawn = v1 + v2 + rest
    expected = urn_stay_probability(v1, v2, rest, remaining)
    assert stay_ahead_probability(tally, drawn, remaining) == pytest.approx(expected, abs=1e-12)


def test_budget_rule_counts_samples_without_an_answer_as_the_rest():
    # 4 drawn, 3 voted for "a", 1 had no answer: the rest holds that one sample
    tally = Tally({"a": 3.0}, 3)
    assert stay_ahead_probability(tally, 4, 5) == pytest.approx(urn_stay_probability(3, 0, 1, 5), abs=1e-12)


def test_budget_rule_tends_to_the_beta_rule_and_stops_sooner_with_few_samples_left():
    tally = Tally({"a": 3.0, "b": 1.0}, 4)
    beta = leader_probability(tally)  # 0.8125
    far = stay_ahead_probability(tally, 4, 400)
    assert far == pytest.approx(beta, abs=0.01)
    near = [stay_ahead_probability(tally, 4, r) for r in (12, 4, 1)]
    assert beta < near[0] < near[1] < near[2] == 1.0  # one sample cannot overturn a lead of two
    assert not RULE.settled(tally, 4, 16) and RULE.settled(tally, 4, 5)
    assert stay_ahead_probability(Tally({}, 0), 4, 4) == 0.0
    assert stay_ahead_probability(Tally({"a": 1.0, "b": 1.0}, 2), 2, 6) == pytest.approx(0.5)


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="adaptive rule"):
        AdaptiveStop(rule="dirichlet").validate()


def test_samples_already_drawn_below_min_n_do_not_stop():
    unanimous = lambda k: Tally({"2": float(k)}, k)  # noqa: E731
    assert replay(AdaptiveStop(min_n=8, wave=4), 16, unanimous, drawn=4) == 8
    assert replay(AdaptiveStop(min_n=4, wave=4), 16, unanimous, drawn=4) == 4
    gen = FakeGenerator(UNANIMOUS)
    rule = AdaptiveStop(min_n=8, wave=4)
    result = auto("q", gen, None, SearchConfig(n=16, adaptive=rule), table=ComputeOptimalTable())
    assert len(result.candidates) == 8  # the probes, then one wave to reach min_n


def test_waves_reach_min_n_first_and_end_at_n():
    assert AdaptiveStop(min_n=4, wave=4).waves(16) == [4, 4, 4, 4]
    assert AdaptiveStop(min_n=6, wave=4).waves(16) == [6, 4, 4, 2]
    assert AdaptiveStop(min_n=4, wave=4).waves(16, drawn=4) == [4, 4, 4]
    assert AdaptiveStop(min_n=8, wave=2).waves(5) == [5]
    with pytest.raises(ValueError):
        AdaptiveStop(threshold=0.4).validate()


@pytest.mark.parametrize("seed", range(30))
def test_replay_never_stops_before_min_n_nor_after_n(seed):
    rng = random.Random(seed)
    n, rule = (
        rng.randint(1, 24),
        AdaptiveStop(
            threshold=rng.choice([0.6, 0.9, 0.95]),
            min_n=rng.randint(1, 8),
            wave=rng.randint(1, 5),
            rule=rng.choice(["budget", "beta"]),
        ),
    )
    answers = [rng.choice("aab") for _ in range(n)]  # often settled early

    def tally(k: int) -> Tally:
        counts = {a: float(answers[:k].count(a)) for a in set(answers[:k])}
        return Tally(counts, k)

    used = replay(rule, n, tally)
    assert min(rule.min_n, n) <= used <= n
    assert used == n or rule.settled(tally(used), used, n)


def test_adaptive_majority_stops_after_one_wave_when_all_agree():
    gen = FakeGenerator(UNANIMOUS)
    result = majority("q", gen, None, SearchConfig(n=16, adaptive=RULE))
    assert len(result.candidates) == 4 and result.answer == "2"
    assert [c.first_index for c in gen.calls] == [0]
    assert not gen.leaks()


def test_adaptive_majority_waves_continue_the_numbering_and_match_a_full_run():
    policy = random_policy(seed=3, answers=("1", "2", "3", "4"))  # rarely settles: several waves
    full = majority("q", FakeGenerator(policy), None, SearchConfig(n=16))
    gen = FakeGenerator(policy)
    live = majority("q", gen, None, SearchConfig(n=16, adaptive=RULE))
    k = len(live.candidates)
    assert 4 < k <= 16
    assert [c.first_index for c in gen.calls] == list(range(0, k, 4))
    assert [c.n_each for c in gen.calls] == [4] * (k // 4)
    # the first k live samples are the first k of one run of 16 ...
    assert [c.text for c in live.candidates] == [c.text for c in full.candidates[:k]]
    # ... and a replay over the full run's samples stops where the live run did
    votes = lambda m: tally_votes(full.candidates[:m], lambda c: 1.0)  # noqa: E731
    assert replay(RULE, 16, votes) == k
    assert not gen.leaks()


def test_adaptive_sampling_is_deterministic_at_a_seed():
    runs = [
        majority("q", FakeGenerator(random_policy(seed=5)), None, SearchConfig(n=16, adaptive=RULE))
        for _ in range(2)
    ]
    assert [c.text for c in runs[0].candidates] == [c.text for c in runs[1].candidates]
    assert runs[0].answer == runs[1].answer


def test_adaptive_off_draws_all_n_in_one_call():
    gen = FakeGenerator(UNANIMOUS)
    result = majority("q", gen, None, SearchConfig(n=16))
    assert len(result.candidates) == 16 and len(gen.calls) == 1


def test_weighted_best_of_n_scores_each_wave_before_deciding():
    policy = random_policy(seed=1, answers=("1", "2", "3"))
    scorer = FakeScorer(default=0.5)
    gen = FakeGenerator(policy)
    result = weighted_best_of_n("q", gen, scorer, SearchConfig(n=16, adaptive=RULE))
    k = len(result.candidates)
    assert scorer.counters.calls == k // 4  # one PRM call per wave
    assert all(c.score is not None for c in result.candidates)
    # stopped where the PRM-weighted vote of its own candidates says
    weighted = lambda m: tally_votes(result.candidates[:m], lambda c: c.score or 0.0)  # noqa: E731
    assert k == 16 or RULE.settled(weighted(k), k, 16)
    assert not gen.leaks()


def test_auto_continues_after_the_probes_under_their_seed():
    policy = random_policy(seed=3, answers=("1", "2", "3", "4"))
    gen = FakeGenerator(policy)
    config = SearchConfig(n=16, adaptive=RULE)
    result = auto("q", gen, None, config, table=ComputeOptimalTable())  # default rule: majority
    assert result.strategy == "auto:majority"
    k = len(result.candidates)
    assert [c.first_index for c in gen.calls] == list(range(0, k, 4))
    assert {s.seed for s in gen.samplings} == {config.sampling.seed}  # probes' seed, numbered on
    full = majority("q", FakeGenerator(policy), None, SearchConfig(n=16))
    assert [c.text for c in result.candidates] == [c.text for c in full.candidates[:k]]


def test_auto_stops_at_the_probes_when_they_agree():
    gen = FakeGenerator(UNANIMOUS)
    result = auto("q", gen, None, SearchConfig(n=16, adaptive=RULE), table=ComputeOptimalTable())
    assert len(result.candidates) == PROBE_N and len(gen.calls) == 1


def test_adaptive_is_on_for_users_and_can_be_turned_off():
    assert SolveOptions().search_config().adaptive == AdaptiveStop()
    assert SolveOptions(adaptive=False).search_config().adaptive is None
    assert SearchFields().adaptive is True
    assert SearchFields(adaptive=False).adaptive is False
    assert SearchConfig().adaptive is None  # the library default: exactly n (benchmarks, tools)
    with pytest.raises(ValueError):
        replace(SearchConfig(), adaptive=AdaptiveStop(wave=0)).validate()
    for vote in (majority, confidence_vote):  # called directly: refused, not an endless loop
        with pytest.raises(ValueError, match="wave"):
            vote("q", FakeGenerator(UNANIMOUS), None, SearchConfig(n=8, adaptive=AdaptiveStop(wave=0)))


def test_tally_counts_only_answers_that_vote():
    gen = FakeGenerator(UNANIMOUS)
    paths = gen.extend([gen.root("q")], 2, to_end=True)
    cands = [to_candidate(p) for p in paths]
    assert tally_votes(cands, lambda c: 1.0) == Tally({"2": 2.0}, 2)


def test_a_pruned_sample_is_not_scored_again_at_its_waves_end():
    """Seen in review: the wave's scoring call scored the pruned samples again, whose every
    step the pruning had just scored."""
    from edgetts.search.best_of_n import weighted_best_of_n

    tree = {"bad\n": {"b2\n": {"\\boxed{1}": {}}}, "good\n": {"g2\n": {"\\boxed{2}": {}}}}
    scores = {"bad": 0.1, "good": 0.9, "b2": 0.5, "g2": 0.9, "\\boxed{1}": 0.9, "\\boxed{2}": 0.9}
    scorer = FakeScorer(scores)
    adaptive = AdaptiveStop(min_n=4, wave=4, prune_below=0.2)
    result = weighted_best_of_n(
        "q", FakeGenerator(tree_policy(tree)), scorer, SearchConfig(n=4, agg="min", adaptive=adaptive)
    )
    assert [c.stop_reason for c in result.candidates].count("pruned") == 2 and result.answer == "2"
    assert scorer.seen[-1] == [("good\n", "g2\n", "\\boxed{2}")] * 2  # the two that ran to the end
    assert all(c.step_scores for c in result.candidates)  # the pruned ones keep their scores


def test_auto_with_a_prm_continues_weighted_scoring_each_wave():
    policy = random_policy(seed=3, answers=("1", "2", "3", "4"))
    gen, scorer = FakeGenerator(policy), FakeScorer(default=0.5)
    result = auto("q", gen, scorer, SearchConfig(n=16, adaptive=RULE), table=ComputeOptimalTable())
    assert result.strategy == "auto:weighted_best_of_n"
    k = len(result.candidates)
    assert [c.first_index for c in gen.calls] == list(range(0, k, 4))
    assert scorer.counters.calls == len(gen.calls)  # the probes, then each wave once
    assert all(c.score is not None for c in result.candidates)
    assert not gen.leaks()


# Samples 0 and 2 take a wrong turn the PRM scores 0.1 and would run two more steps; 1 and 3 are fine.
PRUNE_TREE = tree_policy(
    {
        "a wrong turn\n": {"more words on it\n": {"so the answer is \\boxed{52}": {}}},
        "x = 2\n": {"so the answer is \\boxed{2}": {}},
    }
)
PRUNE_SCORES = {"a wrong turn": 0.1}
PRUNING = replace(RULE, prune_below=0.2)


def test_weighted_vote_stops_a_sample_at_the_step_that_scores_under_prune_below():
    scorer = FakeScorer(PRUNE_SCORES, default=0.9)
    gen = FakeGenerator(PRUNE_TREE)
    result = weighted_best_of_n("q", gen, scorer, SearchConfig(n=4, agg="min", adaptive=PRUNING))
    assert result.answer == "2"
    pruned = [c for c in result.candidates if c.stop_reason == "pruned"]
    assert [c.text for c in pruned] == ["a wrong turn\n"] * 2  # nothing decoded after that step
    assert all(c.step_scores == [0.1] for c in pruned)
    full_gen = FakeGenerator(PRUNE_TREE)
    weighted_best_of_n(
        "q", full_gen, FakeScorer(PRUNE_SCORES, default=0.9), SearchConfig(n=4, agg="min", adaptive=RULE)
    )
    assert gen.counters.tokens_decoded < full_gen.counters.tokens_decoded
    assert not gen.leaks()


def test_a_wave_always_runs_one_sample_to_its_end():
    wrong = tree_policy({"a wrong turn\n": {"more words on it\n": {"so the answer is \\boxed{52}": {}}}})
    gen = FakeGenerator(wrong)
    result = weighted_best_of_n(
        "q", gen, FakeScorer(PRUNE_SCORES, default=0.9), SearchConfig(n=4, agg="min", adaptive=PRUNING)
    )
    assert [c.stop_reason for c in result.candidates] == ["pruned"] * 3 + ["eos"]
    assert result.answer == "52"  # a real answer, not a fragment's guess


@pytest.mark.parametrize("agg, prunes", [("min", True), ("prod", True), ("last", False)])
def test_pruning_only_where_a_low_step_bounds_the_paths_score(agg, prunes):
    # Under "last" a sample that took a wrong turn (0.1) may end well (0.9): it is no sample
    # whose vote could not have weighed more, so it runs on.
    gen = FakeGenerator(PRUNE_TREE)
    config = SearchConfig(n=4, agg=agg, adaptive=PRUNING)
    result = weighted_best_of_n("q", gen, FakeScorer(PRUNE_SCORES, default=0.9), config)
    assert ("pruned" in [c.stop_reason for c in result.candidates]) == prunes
    assert not gen.leaks()


def test_weighted_waves_stopped_by_a_cancel_before_the_vote_settled_are_cut_short():
    cancel = threading.Event()

    def score_then_cancel(step: str) -> float:
        cancel.set()  # as if the deadline passed while the first wave was scored
        return 0.5

    gen = FakeGenerator(random_policy(seed=3, answers=("1", "2", "3", "4")))
    config = SearchConfig(n=16, adaptive=RULE, cancel=cancel)
    result = weighted_best_of_n("q", gen, FakeScorer(rule=score_then_cancel), config)
    assert len(result.candidates) == RULE.wave and all(c.stop_reason == "eos" for c in result.candidates)
    assert result.cut_short  # every sample finished, but the vote had not settled
    assert not gen.leaks()


def test_past_the_deadline_a_pruned_fragment_is_no_answer_in_hand():
    gen = FakeGenerator(tree_policy({"so far \\boxed{7}\n": {"and on \\boxed{8}": {}}}))
    [pruned] = gen.extend([gen.root("q")], 1, to_end=True, stop_early=lambda p: True)
    [partial] = gen.extend([gen.root("q")], 1)  # one step, cut by the deadline
    assert pruned.finished and not partial.finished
    cancel = threading.Event()
    cancel.set()
    scorer = FakeScorer(default=0.5)
    score_in_time(scorer, "q", [partial], [pruned], Deadline(None, cancel))
    assert partial.scores == [0.5]  # scored: the fallback is chosen on scores, not unscored
    gen.release([partial])


def test_a_pruned_answer_votes_only_when_no_sample_has_a_real_one():
    gen = FakeGenerator(tree_policy({"so far \\boxed{7}\n": {"and on \\boxed{8}": {}}}))
    [path] = gen.extend([gen.root("q")], 1, to_end=True, stop_early=lambda p: True)
    assert path.finished and path.stop_reason == "pruned" and path.steps == ["so far \\boxed{7}\n"]
    pruned = to_candidate(path)
    assert pruned.answer == "7" and pruned.provisional
    other = FakeGenerator(UNANIMOUS)
    real = to_candidate(other.extend([other.root("q")], 1, to_end=True)[0])
    # provisional answers are a fallback: they never count as votes that settle a wave
    assert tally_votes([pruned, pruned], lambda c: 1.0).n_votes == 0
    assert tally_votes([pruned, real], lambda c: 1.0) == Tally({"2": 1.0}, 1)


def test_majority_never_prunes_and_pruning_needs_a_threshold():
    gen = FakeGenerator(PRUNE_TREE)
    result = majority("q", gen, None, SearchConfig(n=4, adaptive=PRUNING))
    assert all(c.stop_reason == "eos" for c in result.candidates)
    for bad in (0.0, 1.0, -0.2):
        with pytest.raises(ValueError, match="prune_below"):
            replace(RULE, prune_below=bad).validate()


def test_a_scorer_error_while_pruning_is_raised_on_the_searchs_thread():
    def broken(step: str) -> float:
        raise RuntimeError("scorer broke")

    gen = FakeGenerator(PRUNE_TREE)
    with pytest.raises(RuntimeError, match="scorer broke"):
        weighted_best_of_n("q", gen, FakeScorer(rule=broken), SearchConfig(n=4, adaptive=PRUNING))
    assert not gen.leaks()


def test_auto_prunes_its_weighted_continuation_not_its_probes():
    scorer = FakeScorer(PRUNE_SCORES, default=0.9)
    gen = FakeGenerator(PRUNE_TREE)
    config = SearchConfig(n=16, agg="min", adaptive=replace(PRUNING, threshold=0.999))
    result = auto("q", gen, scorer, config, table=ComputeOptimalTable())
    assert result.strategy == "auto:weighted_best_of_n" and result.answer == "2"
    reasons = [c.stop_reason for c in result.candidates]
    assert "pruned" not in reasons[:PROBE_N] and "pruned" in reasons[PROBE_N:]
    assert not gen.leaks()


def test_a_weighted_vote_stops_at_its_own_threshold_majority_at_the_rules():
    policy = random_policy(seed=3, answers=("1", "2", "3", "4"))  # rarely settles: several waves
    loose = replace(RULE, weighted_threshold=0.6)
    assert loose.for_weighted_vote() == AdaptiveStop(threshold=0.6, min_n=4, wave=4)
    assert RULE.for_weighted_vote() == RULE
    drawn = {}
    for rule in (RULE, loose):
        gen = FakeGenerator(policy)
        result = weighted_best_of_n("q", gen, FakeScorer(default=0.5), SearchConfig(n=16, adaptive=rule))
        cands = result.candidates
        weighted = lambda m, cands=cands: tally_votes(cands[:m], lambda c: c.score or 0.0)  # noqa: E731
        assert replay(rule.for_weighted_vote(), 16, weighted) == len(cands)
        drawn[rule] = len(result.candidates)
        assert not gen.leaks()
    assert drawn[loose] < drawn[RULE]
    votes = [
        len(majority("q", FakeGenerator(policy), None, SearchConfig(n=16, adaptive=rule)).candidates)
        for rule in (RULE, loose)
    ]
    assert votes[0] == votes[1] == drawn[RULE]  # majority keeps the rule's own threshold
    table = ComputeOptimalTable()  # its default rule: weighted best-of-N with a PRM
    auto_drawn = [
        len(
            auto(
                "q",
                FakeGenerator(policy),
                FakeScorer(default=0.5),
                SearchConfig(n=16, adaptive=rule),
                table=table,
            ).candidates
        )
        for rule in (RULE, loose)
    ]
    assert auto_drawn[1] < auto_drawn[0]  # auto's weighted continuation uses it too
    for bad in (0.4, 1.1):
        with pytest.raises(ValueError, match="weighted_threshold"):
            replace(RULE, weighted_threshold=bad).validate()
