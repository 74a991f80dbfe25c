"""Every PRM-guided strategy end to end: the real GGUF through llama.cpp and each shipped ONNX PRM
(the text PRM, and the policy's own probe that reads its hidden states)."""

import pytest

from edgetts.search import run_search
from edgetts.search.base import Sampling, SearchConfig

pytestmark = pytest.mark.slow

QUESTIONS = [
    ("A pen costs 3 dollars. How much do 7 pens cost?", "21"),
    ("Tom has 12 apples and gives away 5. How many apples does he have left?", "7"),
]


@pytest.fixture(scope="module")
def probe_policy():
    """The default policy recording its step states, and the probe shipped for it."""
    from edgetts.paths import shipped_dir
    from edgetts.policy import LlamaPolicy, PolicyConfig
    from edgetts.probe import ProbeScorer

    probe = ProbeScorer.load(shipped_dir() / "prm-probe-qwen05", threads=1)
    config = PolicyConfig(
        n_seq_max=8, max_tokens=256, seed=0, capture_states=True, state_layers=probe.state_layers
    )
    pol = LlamaPolicy(config)
    yield pol, probe
    pol.close()


STRATEGIES = ["best_of_n", "weighted_best_of_n", "beam_search", "dvts"]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("question, gold", QUESTIONS)
def test_strategy_end_to_end(policy, scorer, strategy, question, gold):
    check_search(policy, scorer, strategy, question)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_end_to_end_with_the_policy_probe(probe_policy, strategy):
    policy, probe = probe_policy
    result = check_search(policy, probe, strategy, QUESTIONS[0][0])
    assert result.counters["prm_steps_scored"] >= len(result.candidates)  # states, not text


def check_search(policy, scorer, strategy, question):
    """Run one search with N=4 and check what every strategy owes: answer, scores, counters."""
    policy.root("What is 1 + 1?")  # another prompt in the cache: this search must prefill its own
    prompt_tokens = len(policy.prompt_tokens(question))
    config = SearchConfig(n=4, beam_width=2, max_steps=8, sampling=Sampling(seed=0, max_tokens=200))
    result = run_search(strategy, question, policy, scorer, config)

    assert result.answer is not None and result.chosen is not None
    assert result.candidates and all(c.step_scores for c in result.candidates)
    assert all(0.0 <= s <= 1.0 for c in result.candidates for s in c.step_scores)
    assert result.counters["tokens_prefilled"] == prompt_tokens  # the prompt once, whatever N
    assert result.counters["tokens_redecoded"] == 0  # 4 sequences fit the 8 slots: no rebuild
    assert result.counters["prm_calls"] >= 1
    # Every KV sequence the search used is free again.
    assert sorted(policy.slots.free) == list(range(1, policy.config.n_seq_max + 1))
    if strategy == "best_of_n":  # the pick is the top-scored candidate with an answer
        scored = [c.score for c in result.candidates if c.answer is not None]
        assert result.chosen.score == max(scored)
    return result
