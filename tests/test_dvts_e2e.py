"""DVTS without a round barrier on the real default model through llama.cpp (slow).

Its subtrees are runs of their own in the decode loop: one pass decodes children of different
subtrees at different depths together, and the search still frees every KV slot it used.
"""

from __future__ import annotations

import pytest

from edgetts.search import run_search
from edgetts.search.base import Sampling, SearchConfig

pytestmark = pytest.mark.slow

QUESTION = "A pen costs 3 dollars. How much do 7 pens cost?"


def test_dvts_subtrees_decode_at_different_depths_in_one_batch(policy, scorer, monkeypatch):
    depths_per_pass: list[set[int]] = []
    advance = policy._loop._advance

    def spy(runs):
        # The depth of every one-step run in this pass: the fewest steps among its children (a
        # child pushes its step a token before it is done; runs to the end push many, left out).
        depths = set()
        for run in runs:
            steps = [len(c.path.steps) for c in [*run.active, *run.queue] if not c.to_end]
            depths |= {min(steps)} if steps else set()
        depths_per_pass.append(depths)
        return advance(runs)

    monkeypatch.setattr(policy._loop, "_advance", spy)
    sampling = Sampling(seed=0, max_tokens=200)
    config = SearchConfig(n=8, beam_width=4, max_steps=8, dvts_rounds=False, sampling=sampling)
    result = run_search("dvts", QUESTION, policy, scorer, config)

    assert result.answer is not None and result.candidates
    assert all(c.step_scores for c in result.candidates)
    assert result.answer == "21"
    # The two subtrees were decoded in the same pass at different depths at least once.
    assert any(len(depths) > 1 for depths in depths_per_pass)
    assert sorted(policy.slots.free) == list(range(1, policy.config.n_seq_max + 1))
