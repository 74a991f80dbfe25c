"""Benchmark PRM scoring speed: steps scored per second on the CPU, batch 1 and batch 16.

For each PRM directory and batch size, scores the same fixed items (ProcessBench-format file,
first ``--items`` items): batch 1 scores one path per call, batch 16 scores 16 paths of the
item's question per call (the item's steps repeated, as in a best-of-16 search step). Prints a
table of the median over ``--repeats`` runs, plus the model file size.

Example::

    python tools/bench_prm.py --prm edgetts/assets/prm-minilm edgetts/assets/prm-probe-qwen05 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from edgetts.prm import PRMScorer, read_manifest  # noqa: E402
from edgetts.probe import KIND, ProbeScorer  # noqa: E402
from edgetts.search.base import SolutionPath  # noqa: E402


def run_once(scorer: Any, items: list[dict], batch: int) -> tuple[int, float]:
    """Steps scored and seconds for one pass over the items."""
    steps, t0 = 0, time.perf_counter()
    for it in items:
        score(scorer, it, batch)
        steps += len(it["steps"]) * batch
    return steps, time.perf_counter() - t0


def score(scorer: Any, item: dict, batch: int) -> None:
    """One call: ``batch`` copies of the item's solution. A policy probe scores step states
    (random ones here: its cost does not depend on their values; the policy computes them while
    it decodes anyway), a text PRM the text."""
    if getattr(scorer, "needs_states", False):
        rng = np.random.default_rng(0)
        states = [rng.standard_normal(scorer.manifest.hidden_size).astype(np.float32) for _ in item["steps"]]
        paths = [SolutionPath(steps=item["steps"], step_states=states) for _ in range(batch)]
        scorer.score(item["problem"], paths)
    else:
        scorer.score_steps(item["problem"], [item["steps"]] * batch)


def bench(prm: str, items: list[dict], batch: int, repeats: int, threads: int) -> dict:
    """Median steps/s (and ms per step) over repeats, after one warm-up call."""
    if read_manifest(prm).get("kind") == KIND:
        scorer: Any = ProbeScorer.load(prm, threads=threads)
        precision = "fp32"
    else:
        scorer = PRMScorer.load(prm, threads=threads, batch_size=max(16, batch))
        precision = scorer.manifest.extra.get("precision", "?")
    score(scorer, items[0], 1)
    rates = []
    for _ in range(repeats):
        n, s = run_once(scorer, items, batch)
        rates.append(n / s)
    med = statistics.median(rates)
    size = (Path(prm) / scorer.manifest.model_file).stat().st_size / 2**20
    return {
        "prm": prm,
        "precision": precision,
        "batch": batch,
        "steps_per_s": med,
        "ms_per_step": 1000 / med,
        "runs": rates,
        "onnx_mb": size,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prm", nargs="+", default=["edgetts/assets/prm-minilm"])
    ap.add_argument("--data", default="work/prm/pb_test_gsm8k.json")
    ap.add_argument("--items", type=int, default=20)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    items = json.loads(Path(args.data).read_text())[: args.items]
    n_steps = sum(len(it["steps"]) for it in items)
    print(
        f"{len(items)} items, {n_steps} steps each pass, {args.threads} thread(s), median of {args.repeats}"
    )
    print(f"{'prm':36s} {'prec':>5s} {'batch':>5s} {'steps/s':>9s} {'ms/step':>8s} {'MB':>6s}")
    rows = []
    for prm in args.prm:
        for b in args.batch:
            r = bench(prm, items, b, args.repeats, args.threads)
            rows.append(r)
            print(
                f"{prm:36s} {r['precision']:>5s} {b:5d} {r['steps_per_s']:9.1f} "
                f"{r['ms_per_step']:8.2f} {r['onnx_mb']:6.1f}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
