"""A sampler: owns a ``llama_sampler`` chain (greedy, or top-k / top-p / temperature / seed)."""

from __future__ import annotations

import ctypes

import llama_cpp
import numpy as np

from edgetts.llama.context import LlamaContext

_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class Sampler:
    """Picks tokens from logits with its own random stream (``seed``); greedy at temperature 0."""

    def __init__(self, temperature: float, top_p: float, top_k: int, seed: int) -> None:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if temperature <= 0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            if top_k > 0:
                llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_k(top_k))
            if top_p < 1.0:
                llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(top_p, 1))
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(temperature))
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed))
        self.ptr = chain

    def sample(self, ctx: LlamaContext, row: int) -> int:
        """A token from batch row ``row`` of ``ctx``'s last decode (accepted into the chain)."""
        return llama_cpp.llama_sampler_sample(self.ptr, ctx.ptr, row)

    def sample_from(self, logits: np.ndarray) -> int:
        """A token from saved logits (a fork's first token, sampled from its parent's)."""
        n_vocab = len(logits)
        data = (llama_cpp.llama_token_data * n_vocab)()
        view = np.ctypeslib.as_array(data).view(_TOKEN_DATA)
        view["id"] = np.arange(n_vocab, dtype=np.int32)
        view["logit"] = logits
        view["p"] = 0.0
        arr = llama_cpp.llama_token_data_array(data=data, size=n_vocab, selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(self.ptr, ctypes.byref(arr))
        token = int(data[arr.selected].id)
        llama_cpp.llama_sampler_accept(self.ptr, token)
        return token

    def close(self) -> None:
        if getattr(self, "ptr", None) is not None:
            llama_cpp.llama_sampler_free(self.ptr)
            self.ptr = None

    def __del__(self) -> None:
        self.close()
