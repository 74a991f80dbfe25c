"""Evaluate a PRM with the ProcessBench protocol.

Each data file is a JSON list of ``{id, generator, problem, steps, final_answer_correct, label}``
where ``label`` is the 0-based index of the first wrong step (-1: all steps right). The PRM's
prediction is the first step whose score is below a threshold (-1 when none is). Reported per
file: accuracy on the erroneous items, accuracy on the correct items, and their harmonic mean
(F1); then the mean F1 over files. The threshold is picked (grid 0.01..0.99, best mean F1) on
``--dev`` files when given, else the manifest's ``threshold`` is used.

``--selection RESULTS.jsonl`` instead measures the selection gain on an ``edgetts run`` results
file (per problem ``candidates: [{text, answer, correct}]``, steps separated by blank lines):
accuracy of best-of-N by PRM score (aggregation ``--agg``, default the manifest's; also the
PRM-weighted vote) against majority voting and the oracle (any candidate correct).

``--baseline length`` scores steps by their length instead of a PRM (the direction, long = bad or
short = bad, and the threshold are picked on the dev files): the trivial baseline to beat.
``--baseline calculator`` flags only steps with a false plain-number equation (no model).

Without ``--prm`` the PRM is the step verifier a search uses for the default policy (its
hidden-state probe, each item prefilled through the policy), at its manifest threshold, so
``python tools/eval_prm.py --data FILE`` judges exactly what ships. Example::

    python tools/eval_prm.py --data work/prm/pb_test_gsm8k.json
    python tools/eval_prm.py --prm edgetts/assets/prm-minilm --dev work/prm/pb_dev_*.json \\
        --data work/prm/pb_test_*.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgetts.prompts import split_steps  # noqa: E402

Scores = dict[str, list[list[float]]]
Labels = dict[str, list[int]]
# Thresholds tried when one is picked; below 0.01 too, as heads trained with class balance on
# step labels put the first error's score far down.
GRID = [1e-4, 2e-4, 5e-4, 0.001, 0.002, 0.005] + [round(x, 2) for x in np.arange(0.01, 1.0, 0.01)]


def first_below(scores: list[float], threshold: float) -> int:
    """ProcessBench prediction: index of the first step scored below threshold, else -1."""
    return next((i for i, s in enumerate(scores) if s < threshold), -1)


def prf(preds: list[int], labels: list[int]) -> dict[str, float]:
    """Accuracy on erroneous items, on correct items, and their harmonic mean (percent)."""
    err = [p == y for p, y in zip(preds, labels, strict=True) if y >= 0]
    cor = [p == -1 for p, y in zip(preds, labels, strict=True) if y < 0]
    a_err = 100.0 * float(np.mean(err)) if err else 0.0
    a_cor = 100.0 * float(np.mean(cor)) if cor else 0.0
    f1 = 2 * a_err * a_cor / (a_err + a_cor) if a_err + a_cor > 0 else 0.0
    return {"error_acc": a_err, "correct_acc": a_cor, "f1": f1, "n_error": len(err), "n_correct": len(cor)}


def pick_threshold(scores: Scores, labels: Labels) -> tuple[float, float]:
    """Threshold with the best mean F1 over the given files; returns (threshold, mean F1)."""
    best = (0.5, -1.0)
    for t in GRID:
        f = float(np.mean([prf([first_below(s, t) for s in scores[n]], labels[n])["f1"] for n in scores]))
        if f > best[1]:
            best = (t, f)
    return best


def load_items(path: str) -> list[dict]:
    """A ProcessBench-format JSON list (or JSONL)."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def prm_scores(
    prm: str | None, threads: int | None, files: dict[str, list[dict]], batch: int
) -> tuple[Scores, Any]:
    """Raw per-step scores (calculator check off) of an ONNX PRM for every file, and its manifest.

    Windows are grouped ``batch`` per onnxruntime call (fp32 and int8-weight scores do not
    depend on the batch; int8-dynamic scores do slightly).
    """
    from edgetts.prm import PRMScorer, read_manifest
    from edgetts.probe import KIND

    if prm is not None and read_manifest(prm).get("kind") == KIND:
        return probe_scores(prm, threads, files)
    scorer = PRMScorer.load(prm, threads=threads, batch_size=batch)
    manifest = dataclasses.replace(scorer.manifest)  # as shipped: the scorer's copy is switched off
    scorer.manifest.calculator_check = False
    out: Scores = {}
    chunk = 16 * batch  # windows are sorted by length within a chunk: little padding
    for p, items in files.items():
        out[p] = []
        for b in range(0, len(items), chunk):
            out[p].extend(scorer.score_pairs([(it["problem"], it["steps"]) for it in items[b : b + chunk]]))
    return out, manifest


def probe_scores(prm: str, threads: int | None, files: dict[str, list[dict]]) -> tuple[Scores, Any]:
    """Raw step scores of a policy probe (calculator check off), and its manifest.

    A probe reads the policy's hidden states, so every item is first prefilled through the policy
    it was trained on (:meth:`edgetts.policy.LlamaPolicy.states_of`): slower than a text PRM.
    """
    from edgetts.policy import LlamaPolicy, PolicyConfig
    from edgetts.probe import ProbeScorer

    scorer = ProbeScorer.load(prm, threads=threads)
    manifest = dataclasses.replace(scorer.manifest)
    scorer.manifest.calculator_check = False
    # The default policy: check_policy refuses the pairing if the probe was made for another.
    # Room for the longest items (PRMBench problems run past 1,500 prompt tokens).
    policy = LlamaPolicy(
        PolicyConfig(
            n_seq_max=1,
            max_prompt_tokens=4096,
            max_tokens=4096,
            n_threads=threads,
            capture_states=True,
            state_layers=tuple(scorer.manifest.layers),
        )
    )
    scorer.check_policy(policy.metadata.name, policy.metadata.n_embd)
    out: Scores = {}
    for p, items in files.items():
        # Token confidence too when the probe reads it (manifest "features").
        paths = [
            policy.read_solution(it["problem"], it["steps"], confidence=scorer.needs_confidence)
            for it in items
        ]
        out[p] = [scorer.score(it["problem"], [path])[0] for it, path in zip(items, paths, strict=True)]
    policy.close()
    return out, manifest


def with_calculator(scores: Scores, files: dict[str, list[dict]], cap: float) -> Scores:
    """Apply the runtime's calculator check (cap scores of steps with false arithmetic)."""
    from edgetts.prm import calculator_capped

    return {
        p: [calculator_capped(it["steps"], sc, cap) for sc, it in zip(scores[p], files[p], strict=True)]
        for p in scores
    }


def report(
    name: str,
    scores: Scores,
    files: dict[str, list[dict]],
    data: list[str],
    dev: list[str],
    fixed: float | None,
    default_thr: float,
) -> dict:
    """Pick the threshold on dev (unless fixed), print the per-file table, return results."""
    labels = {p: [it["label"] for it in files[p]] for p in files}
    thr = default_thr
    if fixed is not None:
        thr = fixed
    elif dev:
        thr, _ = pick_threshold({p: scores[p] for p in dev}, {p: labels[p] for p in dev})
    print(
        f"{name}  threshold={thr:.3g}"
        + (f" (picked on {len(dev)} dev file(s))" if dev and fixed is None else "")
    )
    print(f"{'file':44s} {'n_err':>6s} {'n_ok':>6s} {'err_acc':>8s} {'ok_acc':>8s} {'F1':>6s}")
    results = {}
    for p in data:
        r = prf([first_below(s, thr) for s in scores[p]], labels[p])
        results[p] = r
        print(
            f"{Path(p).name:44s} {r['n_error']:6d} {r['n_correct']:6d} {r['error_acc']:8.1f} "
            f"{r['correct_acc']:8.1f} {r['f1']:6.1f}"
        )
    mean = float(np.mean([r["f1"] for r in results.values()]))
    print(f"{'mean F1':44s} {'':6s} {'':6s} {'':8s} {'':8s} {mean:6.1f}")
    return {"name": name, "threshold": thr, "files": results, "mean_f1": mean}


def length_scores(items: list[dict], sign: float) -> list[list[float]]:
    """Trivial baseline: score = squashed step length (sign=+1: long is bad; -1: short is bad)."""
    return [[1.0 / (1.0 + np.exp(sign * (len(s) - 150) / 60.0)) for s in it["steps"]] for it in items]


def is_correct(candidate: dict, row: dict) -> bool:
    """A candidate's grade: stored by ``edgetts run``, graded against the row's gold otherwise."""
    if "correct" in candidate:
        return bool(candidate["correct"])
    from edgetts.grading import answers_equal

    return answers_equal(candidate.get("answer"), row.get("gold"))


def selection_gain(path: str, prm: str | None, threads: int, agg: str | None) -> dict:
    """Best-of-N by a text PRM (``prm``; None: the shipped MiniLM) vs majority vote on sampled
    candidates (accuracy, percent). A probe reads the policy's states of each candidate, which
    a results file does not keep: ``bench_strategies.py rescore`` scores kept samples with one."""
    from edgetts.prm import PRMScorer, read_manifest
    from edgetts.probe import KIND

    if prm is not None and read_manifest(prm).get("kind") == KIND:
        raise SystemExit(
            f"--selection scores text with a text PRM; {prm} is a probe on the policy's states: "
            "use tools/bench_strategies.py rescore --labels DIR --prm ... on kept samples"
        )
    scorer = PRMScorer.load(prm, threads=threads)
    agg = agg or scorer.manifest.default_aggregation
    rows = load_selection_rows(path)
    scores = [
        scorer.score_steps(question_of(r), [split_steps(c["text"]) for c in r["candidates"]]) for r in rows
    ]
    return {"agg": agg, **selection_accuracy(rows, scores, agg)}


def load_selection_rows(path: str) -> list[dict]:
    """Rows of sampled candidates (``edgetts run`` results or bench samples) that have any."""
    rows = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    for r in rows:
        r["candidates"] = [c for c in r.get("candidates", []) if c.get("text")]
    return [r for r in rows if r["candidates"]]


def question_of(row: dict) -> str:
    return row.get("question") or row.get("problem") or ""


def selection_accuracy(rows: list[dict], scores: list[list[list[float]]], agg: str) -> dict:
    """Majority, PRM best-of-N, PRM-weighted vote and oracle accuracy (percent) from step scores,
    and ``pair_auc``: of the (right, wrong) candidate pairs of the same problem, the percentage the
    PRM ranks right first (ties count half). It moves smoothly where accuracy on a few dozen
    problems jumps, so it is the better signal for choosing a checkpoint.

    ``scores[i][j]`` are the step scores of candidate j of row i.
    """
    from dataclasses import replace

    from edgetts.search.base import Candidate, aggregate
    from edgetts.search.select import pick_best, pick_by_vote

    hits: dict[str, list[bool]] = {"majority": [], "prm_best": [], "prm_weighted": [], "oracle": []}
    pairs: list[float] = []
    for r, row_scores in zip(rows, scores, strict=True):
        graded = [is_correct(c, r) for c in r["candidates"]]
        path_scores = [aggregate(s, agg) for s in row_scores]
        right = [sc for ok, sc in zip(graded, path_scores, strict=True) if ok]
        wrong = [sc for ok, sc in zip(graded, path_scores, strict=True) if not ok]
        pairs += [1.0 if a > b else 0.5 if a == b else 0.0 for a in right for b in wrong]
        # The runtime's own picks (answer groups, tie-breaks). Majority sees no scores (tied
        # votes go to the earliest answer), so the baseline is the same whatever PRM is judged.
        unscored = [replace(Candidate.from_dict(c), score=None) for c in r["candidates"]]
        cands = [replace(c, score=sc) for c, sc in zip(unscored, path_scores, strict=True)]
        picks = {
            "majority": (pick_by_vote(unscored, lambda c: 1.0)[0], unscored),
            "prm_best": (pick_best(cands), cands),
            "prm_weighted": (pick_by_vote(cands, lambda c: c.score)[0], cands),
        }
        for name, (pick, pool) in picks.items():
            ok = pick is not None and pick.answer is not None
            hits[name].append(ok and graded[next(i for i, c in enumerate(pool) if c is pick)])
        hits["oracle"].append(any(graded))
    return {
        "n_problems": len(hits["oracle"]),
        **{k: 100.0 * float(np.mean(v)) for k, v in hits.items() if v},
        "pair_auc": 100.0 * float(np.mean(pairs)) if pairs else None,
        "pairs": len(pairs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", default=[], help="ProcessBench-format files to report")
    ap.add_argument(
        "--selection", default=None, help="edgetts run results or bench_strategies samples JSONL (best-of-N)"
    )
    ap.add_argument("--agg", choices=["last", "min", "prod"], default=None)
    ap.add_argument("--dev", nargs="*", default=[], help="files to pick the threshold on")
    ap.add_argument(
        "--prm",
        default=None,
        help="PRM directory (default: the step verifier edgetts uses for the default policy, "
        "its hidden-state probe, whose items are prefilled through the policy; with --selection, "
        "a text PRM, the shipped MiniLM by default)",
    )
    ap.add_argument("--baseline", choices=["length", "calculator"], default=None)
    ap.add_argument("--threshold", type=float, default=None, help="fixed threshold (no picking)")
    ap.add_argument(
        "--calculator",
        choices=["manifest", "on", "off", "both"],
        default="manifest",
        help="override the manifest's calculator_check (arithmetic check)",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16, help="items scored per onnxruntime call")
    ap.add_argument("--limit", type=int, default=None, help="first N items of each file")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    if args.selection:
        res = selection_gain(args.selection, args.prm, args.threads, args.agg)
        print(json.dumps(res, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1))
        return
    if not args.data:
        ap.error("--data is required (or --selection)")
    files = {p: load_items(p)[: args.limit] for p in dict.fromkeys(args.dev + args.data)}
    t0 = time.perf_counter()
    runs: list[tuple[str, Scores, float]] = []
    if args.baseline == "calculator":
        from edgetts.arithmetic import has_wrong_arithmetic

        scores = {
            p: [[0.0 if has_wrong_arithmetic(s) else 1.0 for s in it["steps"]] for it in files[p]]
            for p in files
        }
        runs.append(("baseline:calculator-only", scores, 0.5))
    elif args.baseline == "length":
        dev_labels = {p: [it["label"] for it in files[p]] for p in args.dev}
        sign = (
            max(
                (1.0, -1.0),
                key=lambda sg: pick_threshold({p: length_scores(files[p], sg) for p in args.dev}, dev_labels)[
                    1
                ],
            )
            if args.dev
            else 1.0
        )
        runs.append(
            (f"baseline:length(sign={sign:+.0f})", {p: length_scores(files[p], sign) for p in files}, 0.5)
        )
    else:
        from edgetts.probe import policy_prm_dir  # what a search uses for the default policy

        args.prm = args.prm or str(policy_prm_dir())
        raw, manifest = prm_scores(args.prm, args.threads, files, args.batch)
        modes = {"manifest": ["on" if manifest.calculator_check else "off"], "both": ["off", "on"]}
        for mode in modes.get(args.calculator, [args.calculator]):
            sc = raw if mode == "off" else with_calculator(raw, files, manifest.calculator_cap)
            runs.append(
                (
                    f"{args.prm} calculator={mode}",
                    sc,
                    getattr(manifest, "threshold", 0.5),
                )
            )
    print(f"scored in {time.perf_counter() - t0:.1f}s")
    out = [report(n, sc, files, args.data, args.dev, args.threshold, thr) for n, sc, thr in runs]
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
