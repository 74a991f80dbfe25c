"""Every PRM-guided strategy end to end: the real GGUF through llama.cpp and the shipped ONNX PRM."""

import pytest

from edgetts.search import run_search
from edgetts.search.base import SearchConfig

pytestmark = pytest.mark.slow

QUESTIONS = [
    ("A pen costs 3 dollars. How much do 7 pens cost?", "21"),
    ("Tom has 12 apples and gives away 5. How many apples does he have left?", "7"),
]


@pytest.mark.parametrize("strategy", ["best_of_n", "weighted_best_of_n", "beam_search", "dvts"])
@pytest.mark.parametrize("question, gold", QUESTIONS)
def test_strategy_end_to_end(policy, scorer, strategy, question, gold):
    policy.config.seed, policy.config.max_tokens = 0, 200
    policy.root("What is 1 + 1?")  # another prompt in the cache: this search must prefill its own
    prompt_tokens = len(policy.tokenize(policy.prompt_text(question)))
    config = SearchConfig(n=4, beam_width=2, max_steps=8)
    result = run_search(strategy, question, policy, scorer, config)
    policy.config.max_tokens = 256

    assert result.answer is not None and result.chosen is not None
    assert result.candidates and all(c.step_scores for c in result.candidates)
    assert all(0.0 <= s <= 1.0 for c in result.candidates for s in c.step_scores)
    assert result.counters["tokens_prefilled"] == prompt_tokens  # the prompt once, whatever N
    assert result.counters["tokens_redecoded"] == 0  # 4 sequences fit the 8 slots: no rebuild
    assert result.counters["prm_calls"] >= 1
    # Every KV sequence the search used is free again.
    assert sorted(policy._free_slots) == list(range(1, policy.config.n_seq_max + 1))
    if strategy == "best_of_n":  # the pick is the top-scored candidate with an answer
        scored = [c.score for c in result.candidates if c.answer is not None]
        assert result.chosen.score == max(scored)
