"""What a GGUF file says about itself, read with the ``gguf`` package (no weights are loaded).

The scheduler's memory model and the prompt builder both start here: layer count, KV heads and
head size give KV bytes per token; the chat template decides how the prompt is written.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from edgetts.paths import home, write_atomically

METADATA_VERSION = 2  # raised when what is read from a GGUF changes (the disk cache's key)


class ModelError(Exception):
    """A model that cannot be found, fetched or trusted; the message says what to do."""


@dataclass(frozen=True)
class ModelMetadata:
    path: str
    architecture: str
    name: str
    n_layers: int
    n_ctx_train: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_params: int
    weights_bytes: int
    file_bytes: int
    chat_template: str | None
    sliding_window: int | None  # SWA layers attend to at most this many tokens
    swa_layers: int  # how many of n_layers use the sliding window
    n_vocab: int  # tokens in the vocabulary (each slot's logits are this many floats)

    def kv_bytes_per_token(self, bytes_per_element: float = 2.0, n_ctx: int | None = None) -> float:
        """KV-cache bytes one token costs across all layers (f16 = 2 bytes, q8_0 ~ 1.0625).

        Sliding-window layers keep at most ``sliding_window`` tokens, so past that length they
        cost nothing more; pass ``n_ctx`` to get the average over a context of that size.
        """
        per_layer = self.n_head_kv * (self.head_dim_k + self.head_dim_v) * bytes_per_element
        full_layers = self.n_layers - self.swa_layers
        swa_share = 1.0
        if self.swa_layers and self.sliding_window and n_ctx and n_ctx > self.sliding_window:
            swa_share = self.sliding_window / n_ctx
        return per_layer * (full_layers + self.swa_layers * swa_share)


def _field(reader, key: str, default=None):
    field = reader.get_field(key)
    if field is None:
        return default
    value = field.contents()
    return value


@lru_cache(maxsize=8)
def _read(path: str, size: int, mtime: float) -> ModelMetadata:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except (ValueError, IndexError, KeyError, OSError) as exc:  # KeyError: a key written twice
        # gguf's reader maps the file and fails with numpy's words when the header runs past
        # the end: that is a truncated download far more often than a corrupt byte.
        raise ModelError(
            f"{path} is not a readable GGUF file: truncated or corrupt, its header does not read to "
            f"its end within the file's {size:,} bytes (gguf: {exc})"
        ) from None
    try:
        return _metadata_of(reader, path, size)
    except (ValueError, KeyError, TypeError, IndexError) as exc:  # (UnicodeDecodeError: a ValueError)
        raise ModelError(f"{path} is not a readable GGUF file: a metadata field is damaged ({exc})") from None


# llama.cpp's layout of sliding-window layers where the file gives no pattern: Gemma 2 alternates,
# Gemma 3 has five sliding layers to one global, Cohere 2 three to one; other architectures get
# no sliding layers from llama.cpp (every layer counted at full size is the safe estimate).
SWA_PATTERN = {"gemma2": 2, "gemma3": 6, "cohere2": 4}


def _swa_layers(pattern, n_layers: int, arch: str) -> int:
    """How many of ``n_layers`` use the sliding window: a per-layer list of flags, or llama.cpp's
    period (0: every layer, 1: none, p: all but every p-th)."""
    if isinstance(pattern, list):
        return sum(bool(flag) for flag in pattern[:n_layers])
    period = int(pattern) if pattern is not None else SWA_PATTERN.get(arch, 1)
    return n_layers if period == 0 else n_layers - n_layers // period


def _metadata_of(reader, path: str, size: int) -> ModelMetadata:
    arch = _field(reader, "general.architecture")
    if not arch:
        raise ModelError(f"{path} has no general.architecture: not a llama.cpp model")
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise ModelError(f"{path} is truncated: tensors need {end:,} bytes, the file has {size:,}")

    def arch_field(key: str, default=None):
        return _field(reader, f"{arch}.{key}", default)

    n_layers = int(arch_field("block_count", 0))
    n_embd = int(arch_field("embedding_length", 0))
    n_head = arch_field("attention.head_count", 1)
    n_head = int(np.max(n_head)) if isinstance(n_head, list) else int(n_head)
    n_head_kv = arch_field("attention.head_count_kv", n_head)
    n_head_kv = int(np.max(n_head_kv)) if isinstance(n_head_kv, list) else int(n_head_kv)
    head_dim = n_embd // max(n_head, 1)
    tokens = reader.get_field("tokenizer.ggml.tokens")
    if tokens is None:
        raise ModelError(f"{path} has no tokenizer.ggml.tokens: a model without a vocabulary")
    window = arch_field("attention.sliding_window")
    swa_layers = 0
    if window:
        swa_layers = _swa_layers(arch_field("attention.sliding_window_pattern"), n_layers, str(arch))
    return ModelMetadata(
        path=path,
        architecture=str(arch),
        name=str(_field(reader, "general.name", Path(path).stem)),
        n_layers=n_layers,
        n_ctx_train=int(arch_field("context_length", 0)),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=int(arch_field("attention.key_length", head_dim)),
        head_dim_v=int(arch_field("attention.value_length", head_dim)),
        n_params=int(sum(int(t.n_elements) for t in reader.tensors)),
        weights_bytes=int(sum(int(t.n_bytes) for t in reader.tensors)),
        file_bytes=size,
        chat_template=_field(reader, "tokenizer.chat_template"),
        sliding_window=int(window) if window else None,
        swa_layers=swa_layers,
        n_vocab=len(tokens.data),
    )


def _disk_cache(path: Path, size: int, mtime: float) -> Path:
    # Parsing a GGUF header with gguf's reader walks every vocabulary entry (seconds for a 150k
    # vocabulary), so the result is kept on disk per file version and read back in milliseconds.
    # (METADATA_VERSION: a file cached by an edgetts that read GGUFs otherwise is read again)
    key = hashlib.sha1(f"{METADATA_VERSION}:{path.resolve()}:{size}:{mtime}".encode()).hexdigest()[:16]
    return home() / "metadata" / f"{key}.json"


def read_metadata(path: str | Path) -> ModelMetadata:
    """Read the metadata of a GGUF file (cached in memory and on disk per file version)."""
    path = Path(path)
    stat = path.stat()
    cached = _disk_cache(path, stat.st_size, stat.st_mtime)
    if cached.is_file():
        try:
            return ModelMetadata(**json.loads(cached.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            pass  # unreadable, not UTF-8 or JSON, stale format or torn write: read the model again
    meta = _read(str(path), stat.st_size, stat.st_mtime)
    try:
        write_atomically(cached, json.dumps(asdict(meta)))
    except OSError:
        pass  # a read-only cache only costs speed
    return meta
