"""The policy on llama.cpp (seen in review): batches sized by the context's own n_batch, long steps cut
on whole characters, and no default trust when tokenizing."""

import inspect
import subprocess
import sys
from dataclasses import replace
from types import SimpleNamespace

import pytest

from edgetts.policy.llama_policy import LlamaPolicy

# The policy's two chunk loops, 150 tokens each, on a context clamped to n_batch = 100: one
# batch of 150 failed llama.cpp's GGML_ASSERT and ended the process.
CLAMPED = """
from edgetts.policy import LlamaPolicy, PolicyConfig
from edgetts.policy.slots import TEMPLATE_SLOT

policy = LlamaPolicy(PolicyConfig(n_ctx=100, n_batch=512, n_seq_max=1, max_tokens=16, n_threads=1))
assert policy.context.n_batch == policy._batch.capacity == 100, policy.context.n_batch
tokens = policy.tokenize("word " * 200, special=False)[:150]
policy._loop.call(lambda: policy._decode_tokens(tokens, 0, TEMPLATE_SLOT, None, output_last=True))
root = policy.root("What is 2+3?")
solution = policy._loop.call(lambda: policy._decode_solution(root, tokens, [], 1, False))
assert solution[2].shape == (policy.model.n_vocab,)
print("ok")
"""


@pytest.mark.slow
def test_batches_are_sized_by_the_n_batch_llama_cpp_clamped():
    proc = subprocess.run([sys.executable, "-c", CLAMPED], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]


@pytest.mark.slow
def test_a_long_written_step_is_cut_on_whole_characters(policy, monkeypatch):
    """Each cut piece was decoded on its own: a character split between two tokens became U+FFFD
    on both sides of the cut. The default model writes 𝔹 as two tokens."""
    step = "𝔸𝔹ℂ"
    assert len(policy.tokenize(step, special=False)) == 4
    monkeypatch.setattr(policy, "config", replace(policy.config, max_step_tokens=2))
    tokens, ends, pieces = policy._solution_tokens([step], close_last=False, cut_long=True)
    assert pieces == ["𝔸", "𝔹ℂ"] and ends == [1, 3]


def test_tokenize_asks_whether_the_text_is_trusted():
    """``special`` (read chat markers, add BOS) had a default of True: forgetting it trusted the text."""
    special = inspect.signature(LlamaPolicy.tokenize).parameters["special"]
    assert special.kind is inspect.Parameter.KEYWORD_ONLY and special.default is inspect.Parameter.empty
    calls = []
    fake = SimpleNamespace(model=SimpleNamespace(tokenize=lambda *args: calls.append(args) or [1]))
    with pytest.raises(TypeError):
        LlamaPolicy.tokenize(fake, "x")
    with pytest.raises(TypeError):
        LlamaPolicy.tokenize(fake, "x", True)
    assert LlamaPolicy.tokenize(fake, "x", special=False) == [1] and calls == [("x", False, False)]
