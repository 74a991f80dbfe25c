"""Token confidence (edgetts.confidence) and the DeepConf-style vote that needs no PRM."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest
from fakes import FakeGenerator, n_tokens, tree_policy

from edgetts.confidence import STEP_FEATURES, step_features, token_stats, trace_confidence, window_confs
from edgetts.search import NEEDS_CONFIDENCE, NEEDS_SCORER, run_search
from edgetts.search.base import Candidate, SearchConfig, SolutionPath
from edgetts.search.select import pick_by_confidence


def test_token_stats_match_a_hand_computed_softmax():
    logits = np.array([2.0, 1.0, 0.0, -1.0], dtype=np.float32)
    p = np.exp(logits) / np.exp(logits).sum()
    logprob, entropy, conf = token_stats(logits, 1, top_k=2)
    assert logprob == pytest.approx(math.log(p[1]), abs=1e-5)
    assert entropy == pytest.approx(-(p * np.log(p)).sum(), abs=1e-5)
    assert conf == pytest.approx(-(math.log(p[0]) + math.log(p[1])) / 2, abs=1e-5)


def test_a_peaked_distribution_is_more_confident_than_a_flat_one():
    flat, peaked = np.zeros(100, np.float32), np.zeros(100, np.float32)
    peaked[3] = 12.0
    assert token_stats(peaked, 3)[2] > token_stats(flat, 3)[2]
    assert token_stats(peaked, 3)[1] < token_stats(flat, 3)[1]


def test_window_confs_slide_and_short_traces_give_one_window():
    assert window_confs([1, 2, 3, 4], window=2).tolist() == [1.5, 2.5, 3.5]
    assert window_confs([1, 3], window=8).tolist() == [2.0]
    assert len(window_confs([], window=4)) == 0


def test_trace_confidence_modes():
    confs = [5, 5, 1, 1, 5, 5]
    assert trace_confidence(confs, "lowest", window=2) == 1.0
    assert trace_confidence(confs, "mean") == pytest.approx(22 / 6)
    assert trace_confidence(confs, "tail", tail=2) == 5.0
    assert trace_confidence([], "lowest") == 0.0
    with pytest.raises(ValueError):
        trace_confidence(confs, "median")


def test_step_features_split_tokens_by_step_ends():
    stats = [(-1.0, 0.5, 4.0), (-3.0, 1.5, 2.0), (-0.5, 0.1, 6.0)]
    f = step_features(stats, [2, 3], window=2)
    assert f.shape == (2, len(STEP_FEATURES))
    assert f[0].tolist() == pytest.approx([-2.0, -3.0, 1.0, 3.0, 3.0, math.log(3)])
    # the running lowest window sees the whole trace so far, not the step alone
    assert f[1].tolist() == pytest.approx([-0.5, -0.5, 0.1, 6.0, 3.0, math.log(2)])


def test_step_without_tokens_repeats_the_previous_features():
    f = step_features([(-1.0, 0.5, 4.0)], [1, 1])
    assert f[1].tolist() == f[0].tolist()


def cand(answer: str | None) -> Candidate:
    return Candidate(
        text=f"x {answer}", answer=answer, score=None, step_scores=[], n_tokens=1, stop_reason="eos"
    )


def test_confident_minority_beats_an_unsure_majority():
    cands = [cand("1"), cand("1"), cand("1"), cand("2"), cand("2")]
    confs = [1.0, 1.0, 1.0, 9.0, 9.0]
    chosen, votes = pick_by_confidence(cands, confs, keep=1.0)
    assert chosen.answer == "2" and votes == {"1": 3.0, "2": 18.0}
    # filtering keeps the most confident share only
    chosen, votes = pick_by_confidence(cands, confs, keep=0.4)
    assert votes == {"2": 18.0}


def test_filter_never_drops_everything_and_checks_lengths():
    chosen, votes = pick_by_confidence([cand("1"), cand("2")], [2.0, 3.0], keep=0.0)
    assert chosen.answer == "2"
    with pytest.raises(ValueError):
        pick_by_confidence([cand("1")], [1.0, 2.0], keep=0.5)


def test_unparsed_kept_samples_fall_back_to_parsed_ones():
    chosen, _ = pick_by_confidence([cand(None), cand("7")], [9.0, 1.0], keep=0.5)
    assert chosen.answer == "7"


@dataclass
class ConfGenerator(FakeGenerator):
    """FakeGenerator whose tokens carry a confidence read from the step text (``conf=<x>``)."""

    confs: dict[str, float] = field(default_factory=dict)

    def _grow(self, parent, i, to_end, deadline, stop_early=None):
        child = super()._grow(parent, i, to_end, deadline, stop_early)
        child.token_stats = list(parent.token_stats)
        for step in child.steps[len(parent.steps) :]:
            conf = next((v for k, v in self.confs.items() if k in step), 5.0)
            child.token_stats += [(-1.0, 1.0, conf)] * n_tokens(step)
        return child


TREE = {"a \\boxed{1}": {}, "b \\boxed{1}": {}, "c \\boxed{1}": {}, "d \\boxed{2}": {}}


def test_confidence_vote_runs_as_a_strategy_without_a_prm():
    assert "confidence_vote" in NEEDS_CONFIDENCE and "confidence_vote" not in NEEDS_SCORER
    gen = ConfGenerator(tree_policy(TREE), confs={"a ": 2.0, "b ": 2.0, "c ": 2.0, "d ": 12.0})
    result = run_search("confidence_vote", "q", gen, None, SearchConfig(n=4))
    assert result.answer == "2"  # one sure sample outweighs three unsure ones (KEEP 0.9 keeps 4)
    assert result.votes == {"1": 6.0, "2": 12.0}
    assert [c.score for c in result.candidates] == [2.0, 2.0, 2.0, 12.0]
    assert not gen.leaks()
    # the same samples by plain majority
    assert (
        run_search("majority", "q", FakeGenerator(tree_policy(TREE)), None, SearchConfig(n=4)).answer == "1"
    )


def test_confidence_vote_refuses_a_policy_that_records_no_confidence():
    with pytest.raises(ValueError, match="record_confidence"):
        run_search("confidence_vote", "q", FakeGenerator(tree_policy(TREE)), None, SearchConfig(n=2))


def test_path_copies_carry_token_stats():
    p = SolutionPath(steps=["a"], token_stats=[(-1.0, 0.0, 1.0)], step_token_ends=[1])
    assert p.token_stats and p.step_token_ends == [1]
