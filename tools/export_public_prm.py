"""Export a public token-classification PRM to the edgetts PRM contract (ONNX + manifest).

Two families are supported:

* ``qwen-prm`` -- Qwen2.5-Math-PRM style: steps end with the ``<extra_0>`` tag, the model outputs
  two logits per token (``[batch, seq, 2]``, index 1 = step correct), read by softmax at the tags.
  The chat layout (system / user / assistant) goes into the manifest's prefix / middle / suffix.
* ``math-shepherd`` -- a causal LM whose next-token logits of ``+`` (good) and ``-`` (bad) at the
  step tag ``ки`` give the score; the export keeps only those two columns (``[batch, seq, 2]``,
  index 0 = ``-``, index 1 = ``+``), so the graph output stays small.

With ``--model-dir`` a local HuggingFace checkpoint is loaded (no hub access). With ``--tiny`` a
tiny randomly initialised model of the same architecture is built from transformers config
classes, with a small word-level tokenizer, to exercise the path end to end. Either way a parity
check compares torch and onnxruntime outputs and the scores :class:`edgetts.prm.PRMScorer`
reads at the tags (max abs differences are printed; the export fails above ``--tol``).

Layout note: the runtime tokenizes prefix, question, middle and each step separately and joins
the ids, so BPE merges across those boundaries may differ slightly from tokenizing the whole
chat string at once.

Example::

    python tools/export_public_prm.py --kind qwen-prm --tiny --out work/prm/tiny-qwen-prm
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgetts.prm import PRMScorer  # noqa: E402

QWEN_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
LAYOUTS: dict[str, dict[str, Any]] = {
    "qwen-prm": {
        "step_tag": "<extra_0>",
        "prefix": f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n<|im_start|>user\n",
        "middle": "<|im_end|>\n<|im_start|>assistant\n",
        "suffix": "<|im_end|><|endoftext|>",
        "output": {"name": "logits", "kind": "label_softmax", "positive_index": 1, "negative_index": 0},
    },
    "math-shepherd": {
        "step_tag": "ки",
        "prefix": "",
        "middle": " ",
        "suffix": "",
        "output": {"name": "logits", "kind": "label_softmax", "positive_index": 1, "negative_index": 0},
    },
}


class TwoLabelPRM(nn.Module):
    """Qwen2.5-Math-PRM head on a decoder: Linear -> ReLU -> Linear(2) per token."""

    def __init__(self, backbone: nn.Module, hidden: int) -> None:
        super().__init__()
        self.model = backbone
        self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.score(h)


class LabelTokenPRM(nn.Module):
    """Math-Shepherd style: a causal LM's logits of the (bad, good) label tokens."""

    def __init__(self, lm: nn.Module, bad_id: int, good_id: int) -> None:
        super().__init__()
        self.lm = lm
        self.register_buffer("cols", torch.tensor([bad_id, good_id]), persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = self.lm(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits.index_select(-1, self.cols)


class Wrapped(nn.Module):
    """A HuggingFace PRM whose first output is already ``[batch, seq, 2]``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.m(input_ids=input_ids, attention_mask=attention_mask)[0]


def tiny_tokenizer(path: Path, specials: list[str]) -> Any:
    """A small word-level tokenizer (written to ``path``) with the family's special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = (
        "the a is of to and in we so step answer total each per has have then find "
        "apples cost dollars times plus minus equals boxed + - * / = ( ) . , : $ \\ { }"
    ).split()
    vocab = {"[UNK]": 0}
    for w in words + [str(i) for i in range(100)]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(), pre_tokenizers.Digits()]
    )
    tok.add_special_tokens(specials)
    tok.save(str(path))
    return tok


def tiny_model(kind: str, tok: Any) -> tuple[nn.Module, dict[str, Any]]:
    """A randomly initialised tiny model of the family's architecture (seeded)."""
    torch.manual_seed(0)
    if kind == "qwen-prm":
        from transformers import Qwen2Config, Qwen2Model

        cfg = Qwen2Config(
            vocab_size=tok.get_vocab_size(),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            attn_implementation="eager",
        )
        return TwoLabelPRM(Qwen2Model(cfg), cfg.hidden_size).eval(), {}
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        attn_implementation="eager",
    )
    good, bad = tok.token_to_id("+"), tok.token_to_id("-")
    return LabelTokenPRM(MistralForCausalLM(cfg), bad, good).eval(), {"label_tokens": ["-", "+"]}


def local_model(kind: str, model_dir: Path, good: str, bad: str) -> tuple[nn.Module, dict]:
    """Load a local HuggingFace checkpoint of the family (never downloads)."""
    from tokenizers import Tokenizer

    if kind == "qwen-prm":
        from transformers import AutoModel

        m = AutoModel.from_pretrained(
            model_dir,
            trust_remote_code=True,
            local_files_only=True,
            attn_implementation="eager",
            torch_dtype=torch.float32,
        )
        return Wrapped(m).eval(), {}
    from transformers import AutoModelForCausalLM

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    ids = [tok.encode(t, add_special_tokens=False).ids[-1] for t in (bad, good)]
    lm = AutoModelForCausalLM.from_pretrained(
        model_dir, local_files_only=True, attn_implementation="eager", torch_dtype=torch.float32
    )
    return LabelTokenPRM(lm, *ids).eval(), {"label_tokens": [bad, good]}


def export(model: nn.Module, path: Path, opset: int = 17) -> None:
    """ONNX export with dynamic batch / sequence axes; inputs input_ids, attention_mask."""
    ids = torch.randint(1, 50, (2, 16))
    axes = {0: "batch", 1: "sequence"}
    with torch.no_grad():
        torch.onnx.export(
            model,
            (ids, torch.ones_like(ids)),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "logits": axes},
        )


def write_manifest(out: Path, kind: str, name: str, max_length: int, extra: dict) -> None:
    lay = LAYOUTS[kind]
    man = {
        "name": name,
        "format_version": 1,
        "step_tag": lay["step_tag"],
        "step_separator": "\n\n",
        "max_length": max_length,
        "max_question_tokens": 256,
        "max_step_tokens": 256,
        "prefix": lay["prefix"],
        "middle": lay["middle"],
        "suffix": lay["suffix"],
        "pad_id": 0,
        "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask"},
        "output": lay["output"],
        "score_positions": "step_tag",
        "default_aggregation": "min" if kind == "math-shepherd" else "last",
        "threshold": 0.5,
        "model_file": "model.onnx",
        "tokenizer_file": "tokenizer.json",
        "family": kind,
        **extra,
    }
    (out / "manifest.json").write_text(json.dumps(man, indent=1, ensure_ascii=False) + "\n")


def parity(model: nn.Module, out: Path, question: str, steps: list[list[str]]) -> dict[str, float]:
    """Max abs diff of graph outputs and of tag scores, torch vs onnxruntime via PRMScorer."""
    scorer = PRMScorer.load(out, threads=1)
    got = scorer.score_steps(question, steps)
    out_diff, score_diff = 0.0, 0.0
    for path_steps, g in zip(steps, got, strict=True):
        for w in scorer.builder.windows(question, path_steps):
            ids = torch.tensor([w.ids])
            with torch.no_grad():
                ref = model(ids, torch.ones_like(ids))[0]
            onnx_out = scorer.session.run(
                ["logits"], {"input_ids": ids.numpy(), "attention_mask": np.ones_like(ids.numpy())}
            )
            out_diff = max(out_diff, float(np.abs(onnx_out[0][0] - ref.numpy()).max()))
            p = torch.softmax(ref[w.tag_positions], dim=-1)[:, 1].numpy()
            mine = np.array([g[i] for i in w.step_indices])
            score_diff = max(score_diff, float(np.abs(p - mine).max()))
    return {"max_abs_output_diff": out_diff, "max_abs_score_diff": score_diff}


def run(
    kind: str,
    out: Path,
    tiny: bool,
    model_dir: Path | None = None,
    good: str = "+",
    bad: str = "-",
    max_length: int = 512,
) -> dict[str, float]:
    """Build or load the model, export it, write tokenizer + manifest, check parity."""
    out.mkdir(parents=True, exist_ok=True)
    lay = LAYOUTS[kind]
    if tiny:
        specials = [lay["step_tag"]] + (
            ["<|im_start|>", "<|im_end|>", "<|endoftext|>"] if kind == "qwen-prm" else []
        )
        tok = tiny_tokenizer(out / "tokenizer.json", specials)
        model, extra = tiny_model(kind, tok)
        name = f"tiny-{kind}"
    else:
        assert model_dir is not None
        (out / "tokenizer.json").write_bytes((model_dir / "tokenizer.json").read_bytes())
        model, extra = local_model(kind, model_dir, good, bad)
        name = model_dir.name
    with tempfile.TemporaryDirectory() as tmp:
        export(model, Path(tmp) / "model.onnx")
        (out / "model.onnx").write_bytes((Path(tmp) / "model.onnx").read_bytes())
    write_manifest(out, kind, name, max_length, extra)
    q = "Each apple costs 3 dollars . We buy 4 apples . Find the total cost ."
    steps = [
        ["Each apple costs 3 dollars .", "4 times 3 equals 12 .", "The answer is 12 ."],
        ["4 plus 3 equals 7 ."],
        [],
    ]
    return parity(model, out, q, steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=sorted(LAYOUTS), required=True)
    ap.add_argument("--out", required=True)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--tiny", action="store_true", help="random tiny model built locally")
    src.add_argument("--model-dir", type=Path, help="local HuggingFace checkpoint directory")
    ap.add_argument("--good-token", default="+")
    ap.add_argument("--bad-token", default="-")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()
    torch.set_num_threads(1)
    res = run(
        args.kind, Path(args.out), args.tiny, args.model_dir, args.good_token, args.bad_token, args.max_length
    )
    print(json.dumps({"out": args.out, **res}))
    if max(res.values()) > args.tol:
        raise SystemExit(f"parity failed: {res} > {args.tol}")


if __name__ == "__main__":
    main()
