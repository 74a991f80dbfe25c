"""The context: owns a ``llama_context`` (its KV memory, its logits) and the batch fed to it."""

from __future__ import annotations

import ctypes

import llama_cpp
import numpy as np

from edgetts.llama.errors import LlamaError
from edgetts.llama.layer_tap import LayerTap
from edgetts.llama.model import LlamaModel

GGML_KV_TYPES = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0}  # of KV_TYPES
MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ: sequences one context can hold (checked: 257 fails)


class LlamaBatch:
    """A ``llama_batch`` of up to ``capacity`` tokens, one sequence id each."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.ptr = llama_cpp.llama_batch_init(capacity, 0, 1)

    @property
    def n_tokens(self) -> int:
        return self.ptr.n_tokens

    @property
    def room(self) -> int:
        return self.capacity - self.ptr.n_tokens

    def clear(self) -> None:
        self.ptr.n_tokens = 0

    def add(self, token: int, pos: int, seq: int, logits: bool) -> None:
        """Append ``token`` at position ``pos`` of sequence ``seq``; ``logits``: output its row."""
        b = self.ptr
        i = b.n_tokens
        if i >= self.capacity:
            raise LlamaError(f"batch overflow: more than n_batch={self.capacity} tokens")
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = logits
        b.n_tokens = i + 1

    def close(self) -> None:
        if getattr(self, "ptr", None) is not None:
            llama_cpp.llama_batch_free(self.ptr)
            self.ptr = None

    def __del__(self) -> None:
        self.close()


class LlamaContext:
    """A context on ``model``: decode batches, read their outputs, edit KV sequences.

    ``n_seq_max`` sequences share ``n_ctx`` KV cells in one unified cache, so a prefix forked
    into many sequences is stored once. With ``embeddings`` each output row also has the final
    hidden state; ``tap`` copies chosen transformer blocks' outputs as they are computed.
    ``n_batch`` is what llama.cpp made of the one asked for (at most ``n_ctx``): size batches by it.
    """

    def __init__(
        self,
        model: LlamaModel,
        n_ctx: int,
        n_batch: int,
        n_seq_max: int,
        n_threads: int,
        kv_type: str = "f16",
        embeddings: bool = False,
        tap: LayerTap | None = None,
    ) -> None:
        if kv_type not in GGML_KV_TYPES:
            raise LlamaError(f"unknown KV cache type {kv_type!r}; choose one of {list(GGML_KV_TYPES)}")
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = n_seq_max
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.type_k = GGML_KV_TYPES[kv_type]
        params.type_v = GGML_KV_TYPES[kv_type]
        # A quantized V cache needs flash attention; f16 lets llama.cpp decide.
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if kv_type != "f16"
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
        )
        params.kv_unified = True  # shared prefixes stored once, whatever the number of forks
        if embeddings:
            # Per-token final hidden states beside the logits, for the rows we ask logits of.
            params.embeddings = True
            params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_NONE
        if tap is not None:
            params.cb_eval = tap.callback
            params.cb_eval_user_data = None
        params.no_perf = True
        self.n_ctx = n_ctx
        self.n_vocab = model.n_vocab
        self.n_embd = model.n_embd
        self.model = model  # the context needs its model alive
        self.ptr = llama_cpp.llama_init_from_model(model.ptr, params)
        if not self.ptr:
            raise LlamaError(
                f"llama.cpp could not create a context of {n_ctx} tokens "
                f"for {n_seq_max} sequences (out of memory?)"
            )
        self.memory = llama_cpp.llama_get_memory(self.ptr)
        # llama.cpp makes n_batch at most the n_ctx asked for: a batch of more tokens than it says
        # here fails an assert that ends the process, so batches are sized and cut by this one
        self.n_batch: int = llama_cpp.llama_n_batch(self.ptr)

    def decode(self, batch: LlamaBatch) -> None:
        """Run the model on ``batch``; its output rows are readable until the next decode."""
        ret = llama_cpp.llama_decode(self.ptr, batch.ptr)
        if ret == 1:
            raise LlamaError(
                f"the KV cache is full (n_ctx={self.n_ctx}); raise n_ctx or lower n_seq_max / max_tokens"
            )
        if ret != 0:
            raise LlamaError(f"llama_decode failed with code {ret}")

    def logits_view(self, row: int) -> np.ndarray:
        """Batch row ``row``'s logits in llama.cpp's buffer: valid until the next decode."""
        ptr = llama_cpp.llama_get_logits_ith(self.ptr, row)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def embedding(self, row: int) -> np.ndarray:
        """Batch row ``row``'s final hidden state (a copy; needs ``embeddings``)."""
        ptr = llama_cpp.llama_get_embeddings_ith(self.ptr, row)
        return np.ctypeslib.as_array(ptr, shape=(self.n_embd,)).copy()

    def set_embeddings(self, on: bool) -> None:
        llama_cpp.llama_set_embeddings(self.ptr, on)

    def seq_copy(self, src: int, dst: int) -> None:
        """Sequence ``dst`` also holds every cell of ``src`` (tagged, not copied: unified cache)."""
        llama_cpp.llama_memory_seq_cp(self.memory, src, dst, -1, -1)

    def seq_remove(self, seq: int, p0: int = -1, p1: int = -1) -> None:
        """Drop sequence ``seq`` from the KV cache, or only its positions ``p0 <= pos < p1``
        (-1: open end). Cells other sequences also hold stay theirs.

        llama.cpp refuses to remove part of a recurrent state (a model LlamaModel refuses to
        load); a refusal is an error here, never a sequence left holding what it should not."""
        if not llama_cpp.llama_memory_seq_rm(self.memory, seq, p0, p1):
            span = "all positions" if p0 < 0 and p1 < 0 else f"positions {p0}..{p1}"
            raise LlamaError(f"llama.cpp could not remove {span} of KV sequence {seq}")

    def seq_state_size(self, seq: int) -> int:
        """Bytes :meth:`seq_save` would copy for sequence ``seq`` now."""
        return int(llama_cpp.llama_state_seq_get_size(self.ptr, seq))

    def seq_save(self, seq: int) -> np.ndarray:
        """Copy the KV cells of sequence ``seq`` (every cell tagged with it) into host memory.

        The copy is llama.cpp's own serialization: each cell's position, then per layer the K
        and V rows. It holds the cells whatever other sequences share them; drop positions
        first (:meth:`seq_remove`) to leave a shared prefix out.
        """
        size = self.seq_state_size(seq)
        buf = np.empty(size, dtype=np.uint8)
        written = llama_cpp.llama_state_seq_get_data(self.ptr, _u8(buf), size, seq)
        if written != size:
            raise LlamaError(f"saving KV sequence {seq} wrote {written} of {size} bytes")
        return buf

    def seq_restore(self, data: np.ndarray, seq: int) -> bool:
        """Load cells saved by :meth:`seq_save` into sequence ``seq`` (emptied first).

        They go into fresh cells in one contiguous run (llama.cpp's restore asks for that); when
        the cache has no such run free it restores nothing and this returns False.
        """
        return llama_cpp.llama_state_seq_set_data(self.ptr, _u8(data), data.nbytes, seq) > 0

    def seq_positions(self, seq: int) -> tuple[int, int]:
        """The lowest and highest position sequence ``seq`` holds ((-1, -1) when empty)."""
        return (
            llama_cpp.llama_memory_seq_pos_min(self.memory, seq),
            llama_cpp.llama_memory_seq_pos_max(self.memory, seq),
        )

    def clear(self) -> None:
        """Empty the KV cache."""
        llama_cpp.llama_memory_clear(self.memory, True)

    def close(self) -> None:
        if getattr(self, "ptr", None):
            llama_cpp.llama_free(self.ptr)
            self.ptr = None
            self.memory = None  # the context's own: freed with it

    def __del__(self) -> None:
        self.close()


def _u8(buf: np.ndarray) -> ctypes._Pointer:  # type: ignore[type-arg]
    """``buf``'s memory as the ``uint8_t *`` llama.cpp's state functions take."""
    return buf.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
