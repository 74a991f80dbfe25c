"""Step-labelled data for the policy probe, through the default policy (issue 19).

Three label sources, each resumable (rows are appended; a rerun skips the keys already done), each
writing ``<out>/results.jsonl`` (compact: ids, labels, per-step token statistics, the policy's own
texts; never a question) and ``<out>/states/<key>.npz`` (the step states, float16: a cache for
training under ``runs/``, not committed, since a prefill recomputes them)::

    # PRMBench: a correct original_process (every step 1) and modified_process variants whose
    # error_steps are wrong (0 from the first error on), prefilled: no generation at all
    python tools/label_steps.py prmbench --data ../shared/data/prmbench_train/*.jsonl \\
        --out runs/labels/prmbench --layers 6 12 18 -1
    # outcome labels: N samples per problem, states and token confidence captured while sampling
    python tools/label_steps.py sample --data ../shared/data/gsm8k_train.jsonl \\
        --out runs/labels/gsm8k_train -n 8 --offset 200 --limit 400 --layers 6 12 18 -1
    # Monte-Carlo labels (Math-Shepherd): K rollouts from the end of each step of kept samples,
    # forked from the cached prefix (llama_memory_seq_cp); a step's label is the share right
    python tools/label_steps.py rollout --samples runs/labels/gsm8k_train \\
        --out runs/labels/gsm8k_train_mc -k 4 --limit 20
    # the compact rows to commit (gzip, no question text, no states)
    python tools/label_steps.py pack runs/labels/prmbench data/labels/prmbench.jsonl.gz
    # on a new machine: the committed rows back into a directory, their states recomputed by a
    # prefill of each kept solution (no sampling; a resumed `sample` run then skips those keys)
    python tools/label_steps.py restore data/labels/gsm8k_train.jsonl.gz \
        --data ../shared/data/gsm8k_train.jsonl --out runs/labels/gsm8k_train

Step statistics are :data:`edgetts.confidence.STEP_FEATURES`, one row per step. Run with
``EDGETTS_THREADS=1`` in the background on a shared CPU (``nohup ... > log 2>&1 &``); on a CUDA
build of llama.cpp add ``--n-gpu-layers 99`` (``GPU_LAYERS=99 tools/label_all.sh`` runs the queue).

A prefilled state is what sampling recorded up to float rounding (llama.cpp's logits and states
shift a little with the rows in a batch), so a restored directory trains as the original did.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from build_prm_data import DEV_FRAC, TEST_FRAC, split_of  # noqa: E402
from rows import open_rows  # noqa: E402

from edgetts.confidence import STEP_FEATURES, step_features, trace_confidence  # noqa: E402
from edgetts.data import load_problems  # noqa: E402
from edgetts.grading import answers_equal, extract_answer, normalize_answer  # noqa: E402
from edgetts.policy import LlamaPolicy, PolicyConfig  # noqa: E402
from edgetts.probe import save_states  # noqa: E402
from edgetts.prompts import split_steps  # noqa: E402
from edgetts.results import ResultsFile  # noqa: E402
from edgetts.search.base import SolutionPath  # noqa: E402
from edgetts.search.select import to_candidate  # noqa: E402

ROUND = 4  # decimals kept of the step statistics in the compact rows


def open_label_rows(out: Path) -> ResultsFile:
    """``out/results.jsonl``, whose ``done`` keys a resumed run skips (:func:`rows.open_rows`)."""
    return open_rows(out / "results.jsonl", id_field="key")


def write_row(written: ResultsFile, row: dict, paths: list[SolutionPath]) -> None:
    """States first, then the row: a row in results.jsonl means its states are on disk."""
    states = written.path.parent / "states"
    states.mkdir(parents=True, exist_ok=True)
    save_states(states / f"{row['key']}.npz", paths)
    written.append(row)


def stats_of(path: SolutionPath) -> list[list[float]]:
    """The path's per-step token statistics (``STEP_FEATURES``), rounded for the rows."""
    feats = step_features(path.token_stats, path.step_token_ends)
    return np.round(feats, ROUND).tolist()


def make_policy(args: argparse.Namespace, n_seq_max: int, max_tokens: int) -> LlamaPolicy:
    return LlamaPolicy(
        PolicyConfig(
            model=args.model,
            n_seq_max=n_seq_max,
            max_tokens=max_tokens,
            temperature=args.temperature,
            seed=args.seed,
            capture_states=True,
            capture_confidence=True,
            state_layers=tuple(args.layers),
            n_gpu_layers=args.n_gpu_layers,
        )
    )


# -- PRMBench ---------------------------------------------------------------------------------


def prmbench_items(files: list[str], split: str | None = None) -> list[dict]:
    """Every solution to prefill: one original per problem, then its modified variants.

    Items of one problem come together so the prompt's prefill is reused; problems come in
    file order, so a run stopped early still covers every kind of error. ``split`` keeps only
    the problems of that split of ``tools/build_prm_data.py``: its ProcessBench dev/test files
    are made of the same PRMBench problems, so a probe trained on "train" leaves them held out.
    """
    by_idx: dict[str, list[dict]] = {}
    for file in files:
        for line in open(file, encoding="utf-8"):
            d = json.loads(line)
            items = by_idx.setdefault(d["idx"], [])
            if not items:
                items.append(
                    {
                        "key": f"{d['idx']}-original",
                        "idx": d["idx"],
                        "variant": "original",
                        "question": d["original_question"],
                        "steps": d["original_process"],
                        "error_steps": [],
                    }
                )
            errors = sorted(int(e) for e in d.get("error_steps") or [])
            if not errors or not 1 <= errors[0] <= len(d["modified_process"]):
                continue  # no first error among its steps: no label to give (as build_prm_data)
            if not str(d["modified_process"][errors[0] - 1]).strip():
                continue  # an empty first error: dropped with its label, the rest reads right
            items.append(
                {
                    "key": f"{d['idx']}-{d['classification']}",
                    "idx": d["idx"],
                    "variant": d["classification"],
                    "question": d.get("modified_question") or d["original_question"],
                    "steps": d["modified_process"],
                    "error_steps": errors,
                }
            )
    if split is not None:
        by_idx = {idx: items for idx, items in by_idx.items() if split_of(idx, DEV_FRAC, TEST_FRAC) == split}
    return [item for items in by_idx.values() for item in items]


def step_labels(n_steps: int, error_steps: list[int]) -> list[int]:
    """1 before the first erroneous step (1-based ``error_steps``), 0 from it on: a step's label
    says whether the solution is still right so far, as ProcessBench's first error does."""
    first = min(error_steps) if error_steps else n_steps + 1
    return [int(i + 1 < first) for i in range(n_steps)]


def prmbench(args: argparse.Namespace) -> None:
    out = Path(args.out)
    written = open_label_rows(out)
    done = written.done
    items = [i for i in prmbench_items(args.data, args.split)[args.offset :] if i["key"] not in done]
    if args.limit is not None:
        items = items[: args.limit]
    policy = make_policy(args, n_seq_max=1, max_tokens=args.max_tokens)
    t0, tokens = time.perf_counter(), 0
    for k, item in enumerate(items):
        # labels by the steps as numbered in the file, then the empty steps dropped with theirs
        raw = [s.strip() for s in item["steps"]]
        labelled = [(s, y) for s, y in zip(raw, step_labels(len(raw), item["error_steps"]), strict=True) if s]
        steps, labels = [s for s, _ in labelled], [y for _, y in labelled]
        try:
            path = policy.read_solution(item["question"], steps, confidence=True)
        except Exception as e:  # too long for the context: skip, say so
            print(f"skip {item['key']}: {e}", flush=True)
            continue
        tokens += path.n_tokens
        row = {
            "key": item["key"],
            "source": "prmbench",
            "idx": item["idx"],
            "variant": item["variant"],
            "error_steps": item["error_steps"],
            "labels": labels,
            "layers": args.layers,
            "n_tokens": path.n_tokens,
            "step_stats": stats_of(path),
        }
        write_row(written, row, [path])
        if k % 20 == 0:
            rate = tokens / (time.perf_counter() - t0)
            print(f"[{k + 1}/{len(items)}] {item['key']}: {len(steps)} steps; {rate:.0f} tok/s", flush=True)


# -- outcome labels from the policy's own samples ---------------------------------------------


def candidate_row(path: SolutionPath, gold: str) -> dict:
    """A sample as committed: its text, answer, label, per-step statistics, trace confidences."""
    c = asdict(to_candidate(path))
    confs = [s[2] for s in path.token_stats]
    return {
        "text": c["text"],
        "answer": c["answer"],
        "score": None,  # Candidate fields, so the rows rescore like bench samples
        "step_scores": [],
        "correct": answers_equal(c["answer"], gold),
        "n_tokens": c["n_tokens"],
        "stop_reason": c["stop_reason"],
        "step_token_ends": path.step_token_ends,
        "step_stats": stats_of(path),
        "trace_conf": {m: round(trace_confidence(confs, m), ROUND) for m in ("lowest", "tail", "mean")},
    }


# Training problems whose words overlap an evaluation problem's this much (Jaccard) are dropped:
# MAWPS repeats its templates with other numbers and names, and a near-copy of an eval problem in
# the training set would inflate every held-out figure.
NEAR_COPY_JACCARD = 0.5


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def near_copies(questions: list[str], held_out: list[str]) -> list[bool]:
    """For each question: whether its words overlap a held-out question's by NEAR_COPY_JACCARD
    or more (numbers ignored), i.e. whether it is a copy or a template twin of an eval problem."""
    held = [_words(q) for q in held_out]

    def near(q: str) -> bool:
        w = _words(q)
        return any(len(w & h) >= NEAR_COPY_JACCARD * max(len(w | h), 1) for h in held)

    return [near(q) for q in questions]


def held_out_questions(specs: list[str]) -> list[str]:
    """Questions of ``FILE:K`` specs (the first K problems of FILE, the evaluation set)."""
    out: list[str] = []
    for spec in specs:
        path, _, k = spec.rpartition(":")
        if not path or not k.isdigit():
            raise SystemExit(f"--held-out wants FILE:K (the first K problems of FILE), got {spec!r}")
        out += [p.question for p in load_problems(path)[: int(k)]]
    return out


def sample(args: argparse.Namespace) -> None:
    out = Path(args.out)
    written = open_label_rows(out)
    done = written.done
    problems = load_problems(args.data, args.question_key, args.answer_key, args.id_key)
    problems = problems[args.offset : None if args.limit is None else args.offset + args.limit]
    if args.held_out:
        copies = near_copies([p.question for p in problems], held_out_questions(args.held_out))
        print(f"{sum(copies)} of {len(problems)} problems skipped: near-copies of held-out ones", flush=True)
        problems = [p for p, copy in zip(problems, copies, strict=True) if not copy]
    policy = make_policy(args, n_seq_max=args.n, max_tokens=args.max_tokens)
    dataset = Path(args.data).stem
    for k, problem in enumerate(problems):
        key = f"{dataset}-{problem.id}"
        if key in done:
            continue
        t0 = time.perf_counter()
        paths = policy.extend([policy.root(problem.question)], args.n, to_end=True)
        policy.release(paths)
        cands = [candidate_row(p, problem.answer) for p in paths]
        row = {
            "key": key,
            "source": "sample",
            "dataset": dataset,
            "id": problem.id,
            "gold": problem.answer,
            "temperature": args.temperature,
            "seed": args.seed,
            "layers": args.layers,
            "candidates": cands,
        }
        write_row(written, row, paths)
        right = sum(c["correct"] for c in cands)
        n_tok = sum(c["n_tokens"] for c in cands)
        print(
            f"[{k + 1}/{len(problems)}] {key}: {right}/{len(cands)} right, {n_tok} tokens, "
            f"{n_tok / (time.perf_counter() - t0):.0f} tok/s",
            flush=True,
        )


# -- Monte-Carlo rollout labels ---------------------------------------------------------------


def rollout_targets(rows: list[dict], per_problem: int) -> Iterator[tuple[dict, int, dict]]:
    """(row, candidate index, candidate) to roll out: per problem, right and wrong ones alternately,
    since a step label only informs where the outcome is in doubt."""
    for row in rows:
        cands = list(enumerate(row["candidates"]))
        right = [c for c in cands if c[1]["correct"]]
        wrong = [c for c in cands if not c[1]["correct"] and c[1]["answer"] is not None]
        picked = [c for pair in zip(wrong, right, strict=False) for c in pair]
        picked += [c for c in wrong + right if c not in picked]
        for i, cand in picked[:per_problem]:
            yield row, i, cand


def mc_labels(
    policy: LlamaPolicy, question: str, steps: list[str], gold: str, k: int, per_batch: int = 1
) -> list[float]:
    """Share of ``k`` continuations from the end of each step (but the last) that end right; the
    last step's label is the sample's own outcome. Each prefix is prefilled once into a slot and
    forked ``k`` ways (seq_cp shares its KV), never re-decoded per rollout; the rollouts of
    ``per_batch`` steps' prefixes decode together (``per_batch * k`` rows, so the policy needs
    that many sequences), which keeps the batch fuller than one prefix's ``k`` rows."""
    ends = list(range(1, len(steps)))
    labels = []
    for first in range(0, len(ends), per_batch):
        prefixes = [policy.path_from(question, steps[:end]) for end in ends[first : first + per_batch]]
        children = policy.extend(prefixes, k, to_end=True)
        policy.release(children)
        for j in range(len(prefixes)):
            answers = [normalize_answer(extract_answer(c.text)) for c in children[j * k : (j + 1) * k]]
            labels.append(sum(answers_equal(a, gold) for a in answers) / k)
    final = normalize_answer(extract_answer("".join(steps)))
    return labels + [float(answers_equal(final, gold))]


def rollout(args: argparse.Namespace) -> None:
    src, out = Path(args.samples), Path(args.out)
    written = open_label_rows(out)
    done = written.done
    rows = [json.loads(line) for line in (src / "results.jsonl").open(encoding="utf-8")]
    questions = {p.id: p.question for p in load_problems(args.data)}
    rows = [r for r in rows if r["id"] in questions][: args.limit]
    policy = make_policy(args, n_seq_max=args.k * args.batch_prefixes, max_tokens=args.max_tokens)
    for row, i, cand in rollout_targets(rows, args.per_problem):
        key = f"{row['key']}-{i}"
        if key in done:
            continue
        t0 = time.perf_counter()
        steps = split_steps(cand["text"])
        labels = mc_labels(policy, questions[row["id"]], steps, row["gold"], args.k, args.batch_prefixes)
        path = policy.read_solution(questions[row["id"]], steps, confidence=True)
        out_row = {
            "key": key,
            "source": "rollout",
            "dataset": row.get("dataset"),
            "id": row["id"],
            "candidate": i,
            "k": args.k,
            "correct": cand["correct"],
            "labels": labels,
            "layers": args.layers,
            "text": cand["text"],
            "step_stats": stats_of(path),
        }
        write_row(written, out_row, [path])
        print(f"{key}: {len(steps)} steps, labels {labels}, {time.perf_counter() - t0:.0f} s", flush=True)


# -- restoring committed rows -----------------------------------------------------------------


def kept_solutions(row: dict, questions: dict[str, str], prmbench_steps: dict[str, list[str]]) -> list:
    """(question, steps) of each solution a committed row holds, in the order its states were saved."""
    if row["source"] == "prmbench":
        item = prmbench_steps[row["key"]]
        return [(item["question"], [s.strip() for s in item["steps"] if s.strip()])]
    question = questions[str(row["id"])]
    if row["source"] == "rollout":
        return [(question, split_steps(row["text"]))]
    return [(question, split_steps(c["text"])) for c in row["candidates"]]


def step_counts(row: dict) -> list[int]:
    """Steps per solution as the row recorded them (its per-step statistics)."""
    if row["source"] == "sample":
        return [len(c["step_stats"]) for c in row["candidates"]]
    return [len(row["step_stats"])]


def problem_order(row: dict) -> tuple:
    """Rows in their dataset's problem order: numeric ids as numbers (2 before 10), then keys."""
    pid = str(row.get("id", ""))
    return (row.get("dataset", ""), not pid.isdigit(), int(pid) if pid.isdigit() else 0, row["key"])


def restore(args: argparse.Namespace) -> None:
    """Bring packed rows back into ``--out`` with their states, prefilling each kept solution.

    A row already in ``--out`` whose states file is missing (rows unpacked by hand, or a copied
    ``results.jsonl``) gets its states and is not written twice; a row with states is skipped.
    """
    out = Path(args.out)
    with gzip.open(args.src, "rt", encoding="utf-8") as f:
        rows = list(map(json.loads, f))
    if args.limit is not None:
        rows = sorted(rows, key=problem_order)[: args.limit]
    rows = [r for r in rows if not (out / "states" / f"{r['key']}.npz").is_file()]
    questions, prmbench_steps = {}, {}
    if any(r["source"] == "prmbench" for r in rows):
        prmbench_steps = {i["key"]: i for i in prmbench_items(args.data)}
    else:
        questions = {str(p.id): p.question for p in load_problems(args.data[0])}
    missing = [r["key"] for r in rows if r["source"] != "prmbench" and str(r["id"]) not in questions]
    missing += [r["key"] for r in rows if r["source"] == "prmbench" and r["key"] not in prmbench_steps]
    if missing:
        sys.exit(
            f"error: {len(missing)} rows have no question in {' '.join(args.data)} (first: {missing[0]})"
        )
    if args.layers is None:
        layers = {tuple(r["layers"]) for r in rows}
        if len(layers) > 1:
            sys.exit(f"error: the rows captured different layers {sorted(layers)}; pass --layers")
        args.layers = list(layers.pop()) if layers else [6, 12, 18, -1]
    written = open_label_rows(out)  # after the checks above: a refused restore leaves no folder behind
    done = written.done
    policy = make_policy(args, n_seq_max=1, max_tokens=args.max_tokens)
    t0, tokens = time.perf_counter(), 0
    for k, row in enumerate(rows):
        solutions = kept_solutions(row, questions, prmbench_steps)
        paths = [
            policy.read_solution(
                q, steps, confidence=not args.states_only, as_generated=row["source"] != "prmbench"
            )
            for q, steps in solutions
        ]
        if [len(p.steps) for p in paths] != step_counts(row):
            print(f"skip {row['key']}: its steps split differently from the recorded statistics", flush=True)
            continue
        if row["key"] in done:
            (out / "states").mkdir(parents=True, exist_ok=True)
            save_states(out / "states" / f"{row['key']}.npz", paths)
        else:
            write_row(written, row, paths)
        tokens += sum(p.n_tokens for p in paths)
        print(
            f"[{k + 1}/{len(rows)}] {row['key']}: {tokens / (time.perf_counter() - t0):.0f} tok/s", flush=True
        )


# -- packing ----------------------------------------------------------------------------------


def pack(args: argparse.Namespace) -> None:
    """Compact rows to commit: gzip JSONL, sorted by key (stable diffs), no question text."""
    rows = [json.loads(line) for line in (Path(args.src) / "results.jsonl").open(encoding="utf-8")]
    rows = sorted({r["key"]: r for r in rows}.values(), key=lambda r: r["key"])
    for r in rows:
        r.pop("question", None)
    dest = Path(args.dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(dest, "wt", encoding="utf-8", compresslevel=9) as f:
        f.writelines(json.dumps(r, separators=(",", ":")) + "\n" for r in rows)
    print(
        f"{len(rows)} rows -> {dest} ({dest.stat().st_size / 1e3:.0f} kB); "
        f"step statistics: {', '.join(STEP_FEATURES)}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("prmbench", help="prefill PRMBench originals and modified processes")
    b.add_argument("--data", nargs="+", required=True)
    b.add_argument("--limit", type=int, default=None, help="at most this many solutions this run")
    b.add_argument("--offset", type=int, default=0, help="skip the first K solutions (a second process)")
    b.add_argument(
        "--split",
        choices=["train", "dev", "test"],
        help="only problems of this split of tools/build_prm_data.py (train: its dev/test stay held out)",
    )
    s = sub.add_parser("sample", help="N samples per problem with states and confidence (outcome labels)")
    s.add_argument("--data", required=True)
    s.add_argument("-n", "--n", type=int, default=8)
    s.add_argument("--offset", type=int, default=0)
    s.add_argument("--limit", type=int, default=None)
    s.add_argument("--question-key", default=None)
    s.add_argument("--answer-key", default=None)
    s.add_argument("--id-key", default=None)
    s.add_argument(
        "--held-out",
        nargs="*",
        default=[],
        metavar="FILE:K",
        help="skip problems that are near-copies of the first K of FILE (the eval set; see near_copies)",
    )
    r = sub.add_parser("rollout", help="Monte-Carlo step labels for kept samples")
    r.add_argument("--samples", required=True, help="a `sample` output directory")
    r.add_argument("--data", required=True, help="the questions of those samples")
    r.add_argument("-k", type=int, default=4, help="rollouts per step")
    r.add_argument("--per-problem", type=int, default=2, help="samples rolled out per problem")
    r.add_argument(
        "--batch-prefixes", type=int, default=8, help="steps whose rollouts decode in one batch (x k rows)"
    )
    r.add_argument("--limit", type=int, default=None, help="problems")
    t = sub.add_parser("restore", help="committed rows back into a directory, states by prefill")
    t.add_argument("src", help="a packed .jsonl.gz (data/labels/)")
    t.add_argument("--data", nargs="+", required=True, help="the questions (PRMBench: its files)")
    for p in (b, s, r, t):
        p.add_argument("--out", required=True)
        p.add_argument("--max-tokens", type=int, default=400)
        p.add_argument("--temperature", type=float, default=0.3)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--n-gpu-layers", type=int, default=0)
        p.add_argument("-m", "--model", default=None)
    for p in (b, s, r):
        p.add_argument("--layers", type=int, nargs="+", default=[6, 12, 18, -1])
    t.add_argument("--layers", type=int, nargs="+", default=None, help="default: the rows' own")
    t.add_argument(
        "--limit",
        type=int,
        default=None,
        help="only the first N rows, in problem-id order (a sample row holds one problem: the "
        "bench's first N problems)",
    )
    t.add_argument(
        "--states-only",
        action="store_true",
        help="no token statistics in the states files (about 20 %% faster on a CPU): enough for "
        "probes without confidence features and for bench_strategies.py rescore --labels",
    )
    k = sub.add_parser("pack", help="gzip the compact rows of an output directory")
    k.add_argument("src")
    k.add_argument("dest")
    args = ap.parse_args()
    {"prmbench": prmbench, "sample": sample, "rollout": rollout, "restore": restore, "pack": pack}[args.cmd](
        args
    )


if __name__ == "__main__":
    main()
