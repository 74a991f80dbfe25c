"""Copies chosen transformer blocks' outputs while llama.cpp computes a batch (its eval callback)."""

from __future__ import annotations

import ctypes

import llama_cpp
import numpy as np

from edgetts.llama.ggml import ggml_base_lib


class LayerTap:
    """Copies transformer blocks' outputs (graph nodes ``l_out-<i>``) as llama.cpp computes a batch.

    llama.cpp shows its eval callback every node of the graph twice: first asking whether we want
    it, then, for those we do, once it is computed. Only the asked-for blocks are copied (through
    ``ggml_backend_tensor_get``, so GPU-resident tensors work too), and only while ``on``. Rows
    are the batch's tokens in order (blocks before the last hold every token, not only outputs).
    """

    def __init__(self, layers: tuple[int, ...], n_embd: int) -> None:
        ggml = ggml_base_lib()
        self.names = {f"l_out-{i}".encode(): i for i in layers if i >= 0}
        self.rows: dict[int, np.ndarray] = {}
        self.on = True

        @llama_cpp.ggml_backend_sched_eval_callback
        def callback(tensor: ctypes.c_void_p, ask: bool, _user: ctypes.c_void_p) -> bool:
            layer = self.names.get(ggml.ggml_get_name(tensor))
            if ask:
                return layer is not None
            if self.on and layer is not None:
                out = np.empty(ggml.ggml_nelements(tensor), dtype=np.float32)
                ggml.ggml_backend_tensor_get(tensor, out.ctypes.data, 0, out.nbytes)
                self.rows[layer] = out.reshape(-1, n_embd)
            return True

        self.callback = callback  # llama.cpp keeps only the pointer: hold the function here
