"""Export a trained MiniLM PRM (``model.pt`` from train_prm.py) to a PRM directory.

Writes ``--out`` with ``model.onnx`` (dynamic batch and sequence axes), ``tokenizer.json`` (MiniLM's,
padding/truncation off) and ``manifest.json``; ``--quant dynamic|weight`` quantizes to int8
(see :func:`quantize_int8`). A parity check runs the torch model and the ONNX graph on
real windows from ``--parity-data`` and prints the max abs logit difference at the step tags
(fails above ``--tol``).

Example::

    python tools/export_prm.py --ckpt work/prm/run1/model.pt --out work/prm/export/fp32
    python tools/export_prm.py --ckpt work/prm/run1/model.pt --out work/prm/export/int8 --quant weight
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prm_model import base_manifest, build_model, minilm_dir  # noqa: E402

from edgetts.prm import InputBuilder, Manifest, PRMScorer, _load_tokenizer  # noqa: E402


def export_onnx(model: torch.nn.Module, path: Path, opset: int = 17) -> None:
    """TorchScript-based export with dynamic batch / sequence axes."""
    model.eval()
    ids = torch.randint(1000, 2000, (2, 24))
    mask = torch.ones_like(ids)
    types = torch.zeros_like(ids)
    axes = {0: "batch", 1: "sequence"}
    torch.onnx.export(
        model,
        (ids, mask, types),
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["logits"],
        dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes, "logits": axes},
    )


def quantize_int8(src: Path, dst: Path, mode: str, ops: list[str]) -> None:
    """int8 quantization.

    ``dynamic``: onnxruntime dynamic quantization of the weights of ``ops`` (Gather = embedding
    tables); activations are quantized at run time with per-batch scales, so a score depends
    slightly on its batch-mates. ``weight``: weight-only int8 (MatMulNBits, blocks of 32) for
    MatMul plus int8 embedding tables; activations stay float, scores are batch-independent.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if mode == "dynamic":
        quantize_dynamic(
            str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=ops
        )
        return
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    cfg = nbits.DefaultWeightOnlyQuantConfig(
        block_size=32,
        is_symmetric=True,
        bits=8,
        op_types_to_quantize=("MatMul",),
        quant_axes=(("MatMul", 0),),
        accuracy_level=4,
    )
    q = nbits.MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=cfg)
    q.process()
    model = q.model.model
    quantize_embedding_rows(model, "encoder.embeddings.word_embeddings.weight")
    onnx.save(model, str(dst))


def quantize_embedding_rows(model: Any, name: str) -> None:
    """Replace a float embedding table by int8 rows with one float scale per row.

    ``Gather(W, ids)`` becomes ``Cast(Gather(W_int8, ids)) * Gather(scale, ids)``.
    """
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    init = next(i for i in g.initializer if i.name == name)
    w = numpy_helper.to_array(init).astype(np.float32)
    scale = np.maximum(np.abs(w).max(axis=1, keepdims=True), 1e-8) / 127.0
    wq = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    g.initializer.remove(init)
    g.initializer.extend(
        [
            numpy_helper.from_array(wq, name + "_int8"),
            numpy_helper.from_array(scale.astype(np.float32), name + "_scale"),
        ]
    )
    node = next(n for n in g.node if n.op_type == "Gather" and n.input[0] == name)
    ids, out = node.input[1], node.output[0]
    idx = list(g.node).index(node)
    g.node.remove(node)
    new = [
        helper.make_node("Gather", [name + "_int8", ids], [out + "_q"], name=out + "_gq"),
        helper.make_node("Cast", [out + "_q"], [out + "_f"], to=TensorProto.FLOAT, name=out + "_cast"),
        helper.make_node("Gather", [name + "_scale", ids], [out + "_s"], name=out + "_gs"),
        helper.make_node("Mul", [out + "_f", out + "_s"], [out], name=out + "_mul"),
    ]
    for k, n in enumerate(new):
        g.node.insert(idx + k, n)


def write_tokenizer(dst: Path) -> None:
    """MiniLM's tokenizer.json with padding and truncation switched off."""
    tok = json.loads((minilm_dir() / "tokenizer.json").read_text(encoding="utf-8"))
    tok["padding"] = None
    tok["truncation"] = None
    dst.write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")


def parity(model: torch.nn.Module, prm_dir: Path, data: Path, n: int = 32) -> float:
    """Max abs difference of step-tag logits, torch vs onnxruntime, on n real windows."""
    scorer = PRMScorer.load(prm_dir, threads=1)
    builder = scorer.builder
    items = json.loads(data.read_text())[:n]
    worst = 0.0
    for it in items:
        for w in builder.windows(it["problem"], it["steps"]):
            ids = torch.tensor([w.ids])
            with torch.no_grad():
                ref = model(ids, torch.ones_like(ids), torch.tensor([w.types]))[0, w.tag_positions]
            feed = {
                "input_ids": ids.numpy(),
                "attention_mask": np.ones_like(ids.numpy()),
                "token_type_ids": np.array([w.types], dtype=np.int64),
            }
            got = scorer.session.run(["logits"], feed)[0][0, w.tag_positions]
            worst = max(worst, float(np.abs(got - ref.numpy()).max()))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="state dict written by train_prm.py")
    ap.add_argument("--out", required=True, help="PRM directory to write")
    ap.add_argument(
        "--quant",
        choices=["none", "dynamic", "weight"],
        default="none",
        help="int8: dynamic (fastest) or weight-only (batch-independent scores)",
    )
    ap.add_argument("--int8-ops", default="MatMul,Gemm,Gather", help="op types quantized by --quant dynamic")
    ap.add_argument("--threshold", type=float, default=0.5, help="manifest threshold")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument(
        "--agg",
        choices=["last", "min", "prod"],
        default="min",
        help="manifest default_aggregation (measure with eval_prm.py --selection)",
    )
    ap.add_argument(
        "--calculator-cap",
        type=float,
        default=0.05,
        help="cap the score of a step with a false plain-number equation (0: off)",
    )
    ap.add_argument("--parity-data", default="work/prm/pb_dev_prmbench.json")
    ap.add_argument("--tol", type=float, default=1e-3, help="fp32 parity tolerance (logits)")
    args = ap.parse_args()

    torch.set_num_threads(1)
    logging.disable(logging.INFO)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(Path(args.ckpt)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx"
        export_onnx(model, fp32)
        if args.quant != "none":
            quantize_int8(fp32, out / "model.onnx", args.quant, args.int8_ops.split(","))
        else:
            shutil.copy(fp32, out / "model.onnx")
    write_tokenizer(out / "tokenizer.json")
    man = base_manifest(args.max_length)
    man["threshold"] = args.threshold
    man["precision"] = "fp32" if args.quant == "none" else f"int8-{args.quant}"
    man["default_aggregation"] = args.agg
    if args.calculator_cap > 0:
        man["calculator_check"], man["calculator_cap"] = True, args.calculator_cap
    Manifest.from_dict(man)
    (out / "manifest.json").write_text(json.dumps(man, indent=1, ensure_ascii=False) + "\n")
    InputBuilder(_load_tokenizer(out / "tokenizer.json"), Manifest.from_dict(man))
    diff = parity(model, out, Path(args.parity_data))
    size = (out / "model.onnx").stat().st_size / 2**20
    print(
        json.dumps(
            {
                "out": str(out),
                "precision": man["precision"],
                "onnx_mb": round(size, 1),
                "parity_max_abs_logit_diff": diff,
            }
        )
    )
    if args.quant == "none" and diff > args.tol:
        raise SystemExit(f"parity failed: max abs diff {diff:.2e} > {args.tol}")


if __name__ == "__main__":
    main()
