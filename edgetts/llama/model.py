"""The model: owns a ``llama_model`` and reads its vocabulary (tokens in, bytes out)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import llama_cpp

from edgetts.llama.cpu_buffers import apply_cpu_buffer_policy
from edgetts.llama.errors import LlamaError
from edgetts.llama.logs import route_llama_logs

PIECE_BYTES = 256  # longer than most tokens' text (a longer one is read again, see piece)


class LlamaModel:
    """A GGUF model loaded by llama.cpp; :meth:`close` (or collection) frees it."""

    def __init__(self, path: Path, n_gpu_layers: int = 0) -> None:
        route_llama_logs()
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers  # -1: every layer
        params.use_extra_bufts = apply_cpu_buffer_policy().use_extra_bufts  # no AMX (segfaults)
        self.path = path
        self.ptr = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.ptr:
            raise LlamaError(f"llama.cpp could not load {path} (corrupt or unsupported)")
        self._refuse_recurrent()
        self.vocab = llama_cpp.llama_model_get_vocab(self.ptr)
        self.n_vocab: int = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_embd: int = llama_cpp.llama_model_n_embd(self.ptr)
        # token -> bytes, filled as tokens are first seen: the decode loop asks once per token per
        # path, and a token's text never changes (a dict write is atomic, so threads may share it)
        self._pieces: dict[int, bytes] = {}

    def _refuse_recurrent(self) -> None:
        """Refuse (and free) a model with a recurrent state: parking and forking a path drop its
        positions after the prompt, and a recurrent state cannot lose part of itself."""
        for kind in ("recurrent", "hybrid"):
            check = getattr(llama_cpp, f"llama_model_is_{kind}", None)  # hybrid: newer bindings only
            if check is not None and check(self.ptr):
                self.close()
                raise LlamaError(
                    f"{self.path} is a {kind} model (a recurrent state, as in Mamba or RWKV): not "
                    "supported; the search forks and parks paths by removing positions from a "
                    "sequence, which such a state cannot do"
                )

    def tokenize(self, text: str, special: bool, add_bos: bool) -> list[int]:
        """Tokens of ``text``; ``special``: read special-token markers in it (trusted text only)."""
        data = text.encode()
        capacity = len(data) + 16
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_bos, special)
        if n < 0:
            raise LlamaError("prompt too long to tokenize")
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes ``token`` stands for (special tokens as nothing). Any thread may ask: the
        decode loop's thread does, while a request's thread writes a prompt."""
        piece = self._pieces.get(token)
        if piece is None:
            # llama.cpp reads the token's text with a checked index that throws through its C API
            # for an id out of range, which ends the process: refused here instead
            if not 0 <= token < self.n_vocab:
                raise LlamaError(f"token {token} is not in the vocabulary (0..{self.n_vocab - 1})")
            buf = ctypes.create_string_buffer(PIECE_BYTES)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, PIECE_BYTES, 0, False)
            if n < 0:  # the buffer was too small: -n bytes is what the text needs
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
            piece = self._pieces[token] = buf.raw[: max(n, 0)]
        return piece

    def is_end(self, token: int) -> bool:
        """Whether ``token`` ends generation (end of sequence or turn)."""
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    @property
    def bos_text(self) -> str:
        """What a chat template's ``bos_token`` renders: nothing, for every model (a special
        token's piece is empty), since tokenizing the prompt adds the BOS token a model wants;
        rendering it too would give such a model two."""
        bos = llama_cpp.llama_vocab_bos(self.vocab)
        return self.piece(bos).decode(errors="ignore") if bos >= 0 else ""

    @property
    def eos_text(self) -> str:
        """The end-of-sequence token's text (``</s>``), what a chat template's ``eos_token``
        renders: templates such as Mistral's close each earlier assistant turn with it, and the
        template's own text is read with special tokens, so it becomes that token. Empty for a
        vocabulary without one."""
        eos = llama_cpp.llama_vocab_eos(self.vocab)
        if not 0 <= eos < self.n_vocab:
            return ""
        return llama_cpp.llama_vocab_get_text(self.vocab, eos).decode(errors="ignore")

    def close(self) -> None:
        if getattr(self, "ptr", None):
            llama_cpp.llama_model_free(self.ptr)
            self.ptr = None

    def __del__(self) -> None:
        self.close()
