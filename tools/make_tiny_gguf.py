"""Write a tiny Qwen2 GGUF with random weights and the default policy's tokenizer (~16 MB).

For checks of the runtime's *mechanics* where the real 491 MB policy cannot go: the GPU machine
(`tools/gpu_offline.sh`, whose working tree may carry 64 MiB in all). Its text is noise, but it
has the real tokenizer and chat template, so every path of edgetts runs on it unchanged: one
prefill, forked KV sequences, a batch per token, parking (``llama_state_seq_*``), the layer tap.
Two layers of width 64 (one attention head of 64, as a real model's head), a Q8_0 embedding,
the rest f16; seeded, so two runs write the same file::

    python tools/make_tiny_gguf.py --out .gpu/tiny-qwen2.gguf
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gguf
import numpy as np

from edgetts.models import resolve

N_EMBD, N_FF, N_LAYER, N_HEAD, N_HEAD_KV = 64, 128, 2, 1, 1
CONTEXT = 32768
TOKENIZER_KEYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type")


def tokenizer_of(reader: gguf.GGUFReader) -> dict:
    """The source model's tokenizer fields and chat template, as Python values."""
    fields = reader.fields
    return {
        "tokens": fields["tokenizer.ggml.tokens"].contents(),
        "merges": fields["tokenizer.ggml.merges"].contents(),
        "types": fields["tokenizer.ggml.token_type"].contents(),
        "eos": fields["tokenizer.ggml.eos_token_id"].contents(),
        "bos": fields["tokenizer.ggml.bos_token_id"].contents(),
        "pad": fields["tokenizer.ggml.padding_token_id"].contents(),
        "template": fields["tokenizer.chat_template"].contents(),
    }


def write_tiny(source: Path, out: Path, seed: int = 0) -> None:
    """A two-layer Qwen2 with ``source``'s tokenizer and random weights, written to ``out``."""
    tok = tokenizer_of(gguf.GGUFReader(str(source)))
    rng = np.random.default_rng(seed)
    n_vocab = len(tok["tokens"])
    head_dim = N_EMBD // N_HEAD

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float16)

    writer = gguf.GGUFWriter(str(out), "qwen2")
    writer.add_name("tiny random qwen2 (edgetts mechanics checks)")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tok["tokens"])
    writer.add_token_types(tok["types"])
    writer.add_token_merges(tok["merges"])
    writer.add_eos_token_id(tok["eos"])
    writer.add_bos_token_id(tok["bos"])
    writer.add_pad_token_id(tok["pad"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(tok["template"])

    embedding = rng.standard_normal((n_vocab, N_EMBD)).astype(np.float32)
    q8 = gguf.quants.quantize(embedding, gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("token_embd.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    # The output reuses the embedding (tied, as Qwen2.5 0.5B): with a unit final norm the last
    # token's own logit dwarfs the rest and the model repeats it; 0.2 leaves it ~40 % likely.
    writer.add_tensor("output_norm.weight", np.full(N_EMBD, 0.2, dtype=np.float32))
    for i in range(N_LAYER):
        blk = f"blk.{i}"
        writer.add_tensor(f"{blk}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"{blk}.attn_q.weight", weight(N_HEAD * head_dim, N_EMBD))
        writer.add_tensor(f"{blk}.attn_q.bias", np.zeros(N_HEAD * head_dim, dtype=np.float32))
        writer.add_tensor(f"{blk}.attn_k.weight", weight(N_HEAD_KV * head_dim, N_EMBD))
        writer.add_tensor(f"{blk}.attn_k.bias", np.zeros(N_HEAD_KV * head_dim, dtype=np.float32))
        writer.add_tensor(f"{blk}.attn_v.weight", weight(N_HEAD_KV * head_dim, N_EMBD))
        writer.add_tensor(f"{blk}.attn_v.bias", np.zeros(N_HEAD_KV * head_dim, dtype=np.float32))
        writer.add_tensor(f"{blk}.attn_output.weight", weight(N_EMBD, N_HEAD * head_dim))
        writer.add_tensor(f"{blk}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"{blk}.ffn_gate.weight", weight(N_FF, N_EMBD))
        writer.add_tensor(f"{blk}.ffn_up.weight", weight(N_FF, N_EMBD))
        writer.add_tensor(f"{blk}.ffn_down.weight", weight(N_EMBD, N_FF))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--source", default=None, help="GGUF whose tokenizer to copy (default policy if not given)"
    )
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_tiny(Path(args.source) if args.source else resolve(None), args.out, args.seed)
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
