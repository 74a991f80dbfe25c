"""Train the MiniLM step-tag PRM on ``work/prm/train.jsonl`` (CPU, one thread by default).

One forward pass scores all steps: the head is read at every step-tag token and trained with a
class-balanced BCE (1 = step correct so far, 0 = first wrong step and every step after it; steps
labelled -1 are ignored). Inputs are built by :class:`edgetts.prm.InputBuilder`, the same code
the runtime uses, so training and inference see identical token ids.

Writes incrementally under ``--out`` (default ``work/prm/run``): ``last.pt`` (model, optimiser,
step; resumable with ``--resume``), ``model.pt`` (weights of the best evaluation: dev F1, or
with ``--onpolicy-dev`` first how well it ranks held-out policy samples, right above wrong),
``log.jsonl`` (loss / dev metrics). With ``--init`` the starting weights are evaluated first, so
a fine-tune that never helps leaves them as ``model.pt``. Run it in the background::

    nohup python tools/train_prm.py --max-minutes 55 > work/prm/train.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eval_prm import (  # noqa: E402
    first_below,
    load_selection_rows,
    pick_threshold,
    prf,
    question_of,
    selection_accuracy,
)
from prm_model import base_manifest, build_model, minilm_dir  # noqa: E402

from edgetts.prm import InputBuilder, Manifest, _load_tokenizer  # noqa: E402
from edgetts.prompts import split_steps  # noqa: E402

CALCULATOR_CAP = 0.05  # as in the shipped manifest
Item = tuple[list[int], list[int], list[int], list[int]]  # ids, types, tag positions, labels


def load_items(
    path: Path,
    builder: InputBuilder,
    source_weight: dict[str, int],
    source_limit: dict[str, int] | None = None,
    source_offset: dict[str, int] | None = None,
) -> list[Item]:
    """Windows with per-tag labels from a data JSONL (sources repeated by their weight; of each
    source, skip the first ``source_offset`` examples and keep at most ``source_limit``)."""
    kept: list[dict] = []
    seen: dict[str, int] = {}
    for line in open(path, encoding="utf-8"):
        d = json.loads(line)
        src = d["source"]
        seen[src] = seen.get(src, 0) + 1
        k = seen[src] - (source_offset or {}).get(src, 0)
        if k <= 0 or (source_limit and k > source_limit.get(src, 10**9)):
            continue
        kept.append(d)
    return to_items(kept, builder, source_weight)


def to_items(examples: list[dict], builder: InputBuilder, source_weight: dict[str, int]) -> list[Item]:
    """Windows of ``{source, question, steps, labels}`` examples, repeated by source weight."""
    items: list[Item] = []
    for d in examples:
        for w in builder.windows(d["question"], d["steps"]):
            labels = [d["labels"][i] for i in w.step_indices]
            if all(v < 0 for v in labels):
                continue
            for _ in range(source_weight.get(d["source"], 1)):
                items.append((w.ids, w.types, w.tag_positions, labels))
    return items


def onpolicy_examples(paths: list[str]) -> list[dict]:
    """Samples of the policy (``edgetts run`` results) labelled by their final answer."""
    from build_prm_data import load_onpolicy

    return [
        {"source": "onpolicy", "question": e.question, "steps": e.steps, "labels": e.labels}
        for p in paths
        for e in load_onpolicy(p)
    ]


def batches(items: list[Item], max_tokens: int, max_batch: int, rng: random.Random) -> list[list[int]]:
    """Length-bucketed batches of item indices under a padded-token budget."""
    order = list(range(len(items)))
    rng.shuffle(order)
    out: list[list[int]] = []
    for c in range(0, len(order), 64 * max_batch):
        chunk = sorted(order[c : c + 64 * max_batch], key=lambda i: len(items[i][0]))
        cur: list[int] = []
        for i in chunk:
            n = max([len(items[j][0]) for j in cur] + [len(items[i][0])])
            if cur and (n * (len(cur) + 1) > max_tokens or len(cur) >= max_batch):
                out.append(cur)
                cur = []
            cur.append(i)
        if cur:
            out.append(cur)
    rng.shuffle(out)
    return out


def collate(items: list[Item], idx: list[int]) -> tuple[torch.Tensor, ...]:
    """Pad a batch; labels at tag positions, -1 elsewhere."""
    n = max(len(items[i][0]) for i in idx)
    ids = torch.zeros((len(idx), n), dtype=torch.long)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    lab = torch.full((len(idx), n), -1.0)
    for r, i in enumerate(idx):
        a, t, pos, y = items[i]
        ids[r, : len(a)] = torch.tensor(a)
        types[r, : len(a)] = torch.tensor(t)
        mask[r, : len(a)] = 1
        lab[r, pos] = torch.tensor(y, dtype=torch.float)
    return ids, mask, types, lab


@torch.no_grad()
def score_examples(
    model: torch.nn.Module, builder: InputBuilder, examples: list[dict], batch: int = 16
) -> list[list[float]]:
    """Per-step sigmoid scores for ProcessBench-format items with the torch model."""
    model.eval()
    jobs = []
    for k, e in enumerate(examples):
        for w in builder.windows(e["problem"], e["steps"]):
            jobs.append((k, w))
    jobs.sort(key=lambda j: len(j[1].ids))
    out = [[0.0] * len(e["steps"]) for e in examples]
    for b in range(0, len(jobs), batch):
        chunk = jobs[b : b + batch]
        items = [(w.ids, w.types, w.tag_positions, [0] * len(w.tag_positions)) for _, w in chunk]
        ids, mask, types, _ = collate(items, list(range(len(items))))
        logits = model(ids, mask, types)
        for r, (k, w) in enumerate(chunk):
            s = torch.sigmoid(logits[r, w.tag_positions]).tolist()
            for i, v in zip(w.step_indices, s, strict=True):
                out[k][i] = v
    model.train()
    return out


def dev_eval(model: torch.nn.Module, builder: InputBuilder, dev: dict[str, list[dict]]) -> dict:
    """Best-threshold mean ProcessBench F1 over the dev files (threshold shared)."""
    scores = {n: score_examples(model, builder, items) for n, items in dev.items()}
    labels = {n: [e["label"] for e in items] for n, items in dev.items()}
    thr, _ = pick_threshold(scores, labels)
    res = {}
    for n in dev:
        preds = [first_below(s, thr) for s in scores[n]]
        res[n] = prf(preds, labels[n])["f1"]
    res["mean_f1"] = float(np.mean([res[n] for n in dev]))
    res["threshold"] = thr
    return res


def selection_eval(model: torch.nn.Module, builder: InputBuilder, rows: list[dict], agg: str) -> dict:
    """Best-of-N / weighted vote against majority on held-out policy samples, scored as at run
    time (the calculator cap included)."""
    from edgetts.prm import calculator_capped

    examples = [
        {"problem": question_of(r), "steps": split_steps(c["text"])} for r in rows for c in r["candidates"]
    ]
    flat = iter(
        calculator_capped(e["steps"], s, CALCULATOR_CAP)
        for e, s in zip(examples, score_examples(model, builder, examples), strict=True)
    )
    scores = [[next(flat) for _ in r["candidates"]] for r in rows]
    return selection_accuracy(rows, scores, agg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="work/prm")
    ap.add_argument("--out", default="work/prm/run")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--max-steps", type=int, default=3000, help="optimiser steps (LR schedule)")
    ap.add_argument("--max-minutes", type=float, default=55.0, help="stop after this wall time")
    ap.add_argument("--max-tokens", type=int, default=2048, help="padded tokens per batch")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--head-lr", type=float, default=1e-3)
    ap.add_argument(
        "--agg",
        choices=["last", "min", "prod"],
        default="min",
        help="path score for --onpolicy-dev (the manifest's default_aggregation)",
    )
    ap.add_argument(
        "--weight",
        action="append",
        default=[],
        help="SOURCE=K: repeat a source's items K times (prmbench, gsm8k, math, onpolicy)",
    )
    ap.add_argument(
        "--onpolicy-train",
        action="append",
        default=[],
        help="edgetts run results JSONL: the policy's samples, labelled by final answer",
    )
    ap.add_argument(
        "--onpolicy-dev",
        default=None,
        help="results JSONL of held-out problems: keep the checkpoint that ranks their "
        "right samples above their wrong ones best (pair AUC; ties: dev F1)",
    )
    ap.add_argument(
        "--limit",
        action="append",
        default=["gsm8k=3000", "math=2000"],
        help="SOURCE=N: use at most N examples of a source (CPU budget)",
    )
    ap.add_argument(
        "--offset",
        action="append",
        default=[],
        help="SOURCE=N: skip the first N examples of a source (fresh data)",
    )
    ap.add_argument("--init", default=None, help="start from these PRM weights (model.pt)")
    ap.add_argument("--eval-every", type=int, default=300)
    ap.add_argument("--dev-per-file", type=int, default=150)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest.from_dict(base_manifest(args.max_length))
    builder = InputBuilder(_load_tokenizer(minilm_dir() / "tokenizer.json"), manifest)
    limits = {k: int(v) for k, v in (x.split("=") for x in args.limit)}
    offsets = {k: int(v) for k, v in (x.split("=") for x in args.offset)}
    weights = {k: int(v) for k, v in (x.split("=") for x in args.weight)}
    items = load_items(Path(args.data) / "train.jsonl", builder, weights, limits, offsets)
    items += to_items(onpolicy_examples(args.onpolicy_train), builder, weights)
    sel_rows = load_selection_rows(args.onpolicy_dev) if args.onpolicy_dev else []
    dev = {}
    for f in sorted(Path(args.data).glob("pb_dev_*.json")):
        lst = json.loads(f.read_text())
        random.Random(1).shuffle(lst)
        dev[f.stem.removeprefix("pb_dev_")] = lst[: args.dev_per_file]
    ys = [v for it in items for v in it[3] if v >= 0]
    pos_frac = sum(ys) / len(ys)
    print(f"{len(items)} windows, {len(ys)} labelled tags, {pos_frac:.2f} positive", flush=True)

    model = build_model(Path(args.init) if args.init else None)
    model.encoder.embeddings.requires_grad_(False)
    head = list(model.head.parameters())
    body = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head")]
    opt = torch.optim.AdamW(
        [{"params": body, "lr": args.lr}, {"params": head, "lr": args.head_lr}], weight_decay=0.01
    )
    warm = max(1, args.max_steps // 20)

    def lr_factor(s: int) -> float:
        return min(1.0, (s + 1) / warm) * max(0.05, 0.5 * (1 + math.cos(math.pi * s / args.max_steps)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    step, epoch, best = 0, 0, -1.0
    if args.resume and (out / "last.pt").is_file():
        ck = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        step, epoch, best = ck["step"], ck["epoch"], ck["best"]
        rng.setstate(ck["rng"])
        print(f"resumed at step {step}", flush=True)
    w_pos, w_neg = 0.5 / pos_frac, 0.5 / (1 - pos_frac)
    log = open(out / "log.jsonl", "a", encoding="utf-8")
    t0, run_loss, n_loss = time.time(), 0.0, 0
    model.train()
    done = False

    def evaluate_and_keep() -> None:
        nonlocal best
        res = dev_eval(model, builder, dev)
        if sel_rows:
            res["selection"] = selection_eval(model, builder, sel_rows, args.agg)
        res.update(step=step, dev=True, min=round((time.time() - t0) / 60, 2))
        print(json.dumps(res), flush=True)
        log.write(json.dumps(res) + "\n")
        log.flush()
        # Ranking the policy's own samples first when asked for: it is what best-of-N needs.
        key = res["mean_f1"] + (1000 * (res["selection"]["pair_auc"] or 0) if sel_rows else 0)
        if key > best:
            best = key
            torch.save(model.state_dict(), out / "model.pt")

    if args.init and step == 0:
        evaluate_and_keep()
    while not done:
        plan = batches(items, args.max_tokens, args.max_batch, rng)
        for b in plan:
            ids, mask, types, lab = collate(items, b)
            logits = model(ids, mask, types)
            sel = lab >= 0
            y = lab[sel]
            wts = torch.where(y > 0.5, w_pos, w_neg)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[sel], y, weight=wts)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            run_loss += loss.item()
            n_loss += 1
            mins = (time.time() - t0) / 60
            if step % 25 == 0:
                rec = {
                    "step": step,
                    "epoch": epoch,
                    "loss": run_loss / n_loss,
                    "min": round(mins, 2),
                    "lr": sched.get_last_lr()[0],
                }
                print(json.dumps(rec), flush=True)
                log.write(json.dumps(rec) + "\n")
                log.flush()
                run_loss, n_loss = 0.0, 0
            done = step >= args.max_steps or mins >= args.max_minutes
            if step % args.eval_every == 0 or done:
                evaluate_and_keep()
                torch.save(
                    {
                        "model": model.state_dict(),
                        "opt": opt.state_dict(),
                        "sched": sched.state_dict(),
                        "step": step,
                        "epoch": epoch,
                        "best": best,
                        "rng": rng.getstate(),
                    },
                    out / "last.pt",
                )
            if done:
                break
        epoch += 1
    print(f"done: step {step}, best checkpoint key {best:.4f}", flush=True)


if __name__ == "__main__":
    main()
