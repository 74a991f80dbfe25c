"""Token confidence recorded by the real policy, from generation and from a prefill (slow)."""

from __future__ import annotations

import numpy as np
import pytest

from edgetts.confidence import step_features
from edgetts.policy import LlamaPolicy, PolicyConfig
from edgetts.search import run_search
from edgetts.search.base import Sampling, SearchConfig

pytestmark = pytest.mark.slow

QUESTION = "Tom has 3 boxes with 4 apples each. He eats 2 apples. How many apples are left?"


@pytest.fixture(scope="module")
def confident():
    pol = LlamaPolicy(
        PolicyConfig(
            n_seq_max=4, max_tokens=256, temperature=0.0, seed=0, capture_states=True, capture_confidence=True
        )
    )
    yield pol
    pol.close()


def test_generation_and_prefill_agree_on_token_confidence(confident):
    path = confident.extend([confident.root(QUESTION)], 1, to_end=True)[0]
    assert path.stop_reason == "eos"
    assert len(path.token_stats) == path.n_tokens  # the end-of-generation token is not counted
    assert path.step_token_ends[-1] == path.n_tokens and len(path.step_token_ends) == len(path.steps)
    # greedy: every chosen token is the most likely one, so its logprob is the top one's
    assert all(lp <= 1e-6 and h >= -1e-6 and c > 0 for lp, h, c in path.token_stats)
    decoded = confident.counters.tokens_decoded
    read = confident.read_solution(QUESTION, path.steps, confidence=True)
    assert read.step_token_ends == path.step_token_ends
    assert confident.counters.tokens_decoded == decoded + read.n_tokens  # counted, as path_from's
    # the same numbers up to batch numerics (prefill vs one token at a time; seen: mean 0.005)
    diff = np.abs(np.array(read.token_stats) - np.array(path.token_stats))
    assert diff.mean() < 0.02 and diff.max() < 0.3
    a = step_features(path.token_stats, path.step_token_ends)
    b = step_features(read.token_stats, read.step_token_ends)
    np.testing.assert_allclose(a, b, atol=0.2)  # a step's minimum follows its worst token (seen: 0.12)


def test_path_from_forks_continuations_of_a_written_prefix(confident):
    whole = confident.extend([confident.root(QUESTION)], 1, to_end=True)[0]
    prefix = confident.path_from(QUESTION, whole.steps[:1])
    before = confident.counters.tokens_prefilled
    children = confident.extend([prefix], 2, to_end=True)
    assert confident.counters.tokens_prefilled == before  # forked, not prefilled again
    assert [c.steps[0] for c in children] == [whole.steps[0]] * 2
    assert children[0].text == whole.text  # greedy from the same prefix: the same solution
    confident.release(children)


def test_confidence_vote_runs_on_the_real_policy(confident):
    config = SearchConfig(n=4, sampling=Sampling(temperature=0.7))
    result = run_search("confidence_vote", QUESTION, confident, None, config)
    assert len(result.candidates) == 4 and all(c.score and c.score > 0 for c in result.candidates)
    # the vote's winner is the answer with the largest summed confidence (all four kept at KEEP 0.9)
    assert result.answer == max(result.votes, key=result.votes.get)
    assert sum(result.votes.values()) == pytest.approx(
        sum(c.score for c in result.candidates if c.answer is not None)
    )


def test_a_kept_sample_cut_at_max_step_tokens_reads_back_with_its_generated_steps():
    """Generation cuts a step at ``max_step_tokens``; the kept text joins the pieces with no
    separator. ``as_generated`` cuts the text again where generation did, so a kept sample gets
    back one state per generated step (label restores and rescoring need exactly those)."""
    from edgetts.prompts import split_steps

    pol = LlamaPolicy(
        PolicyConfig(n_seq_max=1, max_tokens=256, max_step_tokens=12, temperature=0.0, capture_states=True)
    )
    try:
        path = pol.extend([pol.root(QUESTION)], 1, to_end=True)[0]
        # Ended by the model: a path cut by max_tokens never decoded its last token, so its
        # last state is the token before's, where a prefill reads the last token's.
        assert path.stop_reason == "eos"
        written = split_steps(path.text)
        assert len(path.steps) > len(written)  # some steps were cut at 12 tokens
        read = pol.read_solution(QUESTION, written, as_generated=True)
        assert len(read.steps) == len(path.steps) == len(read.step_states)
        cosine = [
            float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
            for a, b in zip(read.step_states, path.step_states, strict=True)
        ]
        assert min(cosine) > 0.95, cosine  # the same positions, up to batch numerics
        plain = pol.read_solution(QUESTION, written)
        assert len(plain.steps) == len(written)  # without it the given steps stay the units
    finally:
        pol.close()
