"""The llama.cpp layer on the real default model (seen in review): tokens outside the vocabulary, long
token texts, n_batch as llama.cpp clamps it, and models whose memory cannot drop positions.

A bad token id or an oversized batch aborts the whole process inside llama.cpp, so those checks
run in a child process: a regression fails the test instead of ending the test run.
"""

import subprocess
import sys
import textwrap

import llama_cpp
import pytest

from edgetts.llama import model as model_module
from edgetts.llama.context import LlamaContext
from edgetts.llama.errors import LlamaError
from edgetts.llama.model import LlamaModel
from edgetts.models import resolve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model():
    m = LlamaModel(resolve(None))
    yield m
    m.close()


def run_child(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter, the default model loaded as ``m``; it prints ok when done."""
    head = (
        "from edgetts.llama.errors import LlamaError\n"
        "from edgetts.llama.model import LlamaModel\n"
        "from edgetts.models import resolve\n"
        "m = LlamaModel(resolve(None))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", head + textwrap.dedent(code) + "\nprint('ok')"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
    return proc


def test_a_token_outside_the_vocabulary_is_an_error_not_an_abort():
    """Seen in review: llama_token_to_piece(vocab, -1) throws std::out_of_range through the C API,
    which terminates the process (a vocabulary without BOS reads BOS as -1)."""
    run_child(
        """
        for bad in (-1, m.n_vocab):
            try:
                m.piece(bad)
            except LlamaError as exc:
                assert str(bad) in str(exc), exc
            else:
                raise AssertionError(f"piece({bad}) gave no error")
        assert m.piece(m.n_vocab - 1) is not None
        """
    )


def test_a_vocabulary_without_bos_writes_no_bos_text():
    run_child(
        """
        import llama_cpp
        llama_cpp.llama_vocab_bos = lambda vocab: -1  # as llama.cpp answers for such a vocabulary
        assert m.bos_text == ""
        """
    )


def test_a_token_longer_than_the_piece_buffer_is_read_whole(model, monkeypatch):
    """A token's text longer than the buffer came back empty (llama.cpp returns minus the size it
    needs); the default model's longest token is 128 spaces, so the buffer is made smaller here."""
    spaces = " " * 128
    [token] = model.tokenize(spaces, False, False)
    monkeypatch.setattr(model_module, "PIECE_BYTES", 16)
    monkeypatch.setattr(model, "_pieces", {})
    assert model.piece(token) == spaces.encode()


def test_n_batch_is_what_llama_cpp_clamped_it_to(model):
    """llama.cpp makes n_batch at most the n_ctx asked for (it may round n_ctx itself up)."""
    context = LlamaContext(model, n_ctx=100, n_batch=512, n_seq_max=1, n_threads=1)
    try:
        assert context.n_batch == 100 < context.n_ctx + 512
    finally:
        context.close()


def test_a_context_decodes_a_batch_of_its_own_n_batch():
    """A LlamaBatch sized by the context's n_batch cannot take more than llama.cpp decodes (150
    tokens in a batch made for 512, on a context clamped to 100, hit GGML_ASSERT)."""
    run_child(
        """
        from edgetts.llama.context import LlamaBatch, LlamaContext
        c = LlamaContext(m, n_ctx=100, n_batch=512, n_seq_max=1, n_threads=1)
        b = LlamaBatch(c.n_batch)
        for i in range(c.n_batch):
            b.add(100 + i, i, 0, i == c.n_batch - 1)
        try:
            b.add(0, c.n_batch, 0, False)
        except LlamaError:
            pass
        else:
            raise AssertionError("the batch took more than n_batch tokens")
        c.decode(b)
        """
    )


@pytest.mark.parametrize("kind", ["recurrent", "hybrid"])
def test_a_recurrent_or_hybrid_model_is_refused_at_load(monkeypatch, kind):
    """Parking and forking drop a sequence's positions after the prompt; a recurrent state cannot
    (llama.cpp's seq_rm refuses partial removal), so such a model is refused with a reason.
    No such model is at hand: llama.cpp's answer is stood in for."""
    monkeypatch.setattr(llama_cpp, f"llama_model_is_{kind}", lambda model: True)
    with pytest.raises(LlamaError, match=f"{kind}.*not supported"):
        LlamaModel(resolve(None))


def test_a_refused_partial_removal_is_an_error(model, monkeypatch):
    context = LlamaContext(model, n_ctx=256, n_batch=64, n_seq_max=2, n_threads=1)
    try:
        context.seq_remove(1, 0, 5)  # llama.cpp's own answer: an empty range is removed
        monkeypatch.setattr(llama_cpp, "llama_memory_seq_rm", lambda *args: False)
        with pytest.raises(LlamaError, match="could not remove positions 0..5 of KV sequence 1"):
            context.seq_remove(1, 0, 5)
    finally:
        context.close()


def test_a_templates_eos_token_is_the_models_and_reads_back_as_it(model):
    """Seen in review: templates got eos_token "" and a Mistral-style chat closed no earlier
    assistant turn; the template's text is read with special tokens, so the text becomes EOS."""
    eos = llama_cpp.llama_vocab_eos(model.vocab)
    assert model.eos_text and model.tokenize(model.eos_text, special=True, add_bos=False) == [eos]
    assert model.bos_text == ""  # tokenizing adds the BOS a model wants: rendered, it would be two
