"""Train a policy-probe PRM (``edgetts.probe``): a logistic head on the policy's own hidden states.

Sample (or extract), fit, judge; the slow ones resume and write as they go (run them in the
background)::

    # on-policy samples with their step states captured while generating (no extra cost)
    python tools/train_probe.py sample --data ../shared/data/gsm8k_train.jsonl --out work/probe/t03 \\
        --offset 62 --limit 600 -n 8
    # states of samples generated earlier (`edgetts run` results, bench samples): a prefill each
    python tools/train_probe.py extract --results work/prm_onpolicy/dev.jsonl --out work/probe/dev
    # fit the head, pick its L2 strength (on dev, or by --folds K cross-validation), export
    python tools/train_probe.py fit --train work/probe/t03 --dev work/probe/dev --folds 5 \\
        --out edgetts/assets/prm-probe-qwen05
    # or capture several layers (--layers 6 12 16 20 -1 while sampling) and compare them first
    python tools/train_probe.py layers --train work/probe/layers --folds 5
    # judge it on bench samples (bench_strategies keeps their states) beside the text PRM
    python tools/train_probe.py judge --samples runs/bench/gsm8k.samples.jsonl \\
        --prm edgetts/assets/prm-probe-qwen05 --text-prm edgetts/assets/prm-minilm

A state directory holds ``results.jsonl`` (rows like ``edgetts run`` writes: id, question, gold,
candidates with text / answer / correct, plus ``key``) and ``states/<key>.npz`` (the step states
of every candidate, float16, concatenated; ``nsteps`` per candidate). Labels are outcome labels:
every step of a sample gets 1 when its final answer is right, else 0, so the head learns how
likely a solution that has come this far ends right (a value, as Math-Shepherd's labels are).
Training problems whose question is also in ``--dev`` are dropped.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from label_steps import open_label_rows, write_row  # noqa: E402

from edgetts.data import load_problems  # noqa: E402
from edgetts.grading import answers_equal  # noqa: E402
from edgetts.policy import LlamaPolicy, PolicyConfig  # noqa: E402
from edgetts.probe import load_states  # noqa: E402
from edgetts.prompts import split_steps  # noqa: E402
from edgetts.search.base import SolutionPath  # noqa: E402
from edgetts.search.select import to_candidate  # noqa: E402

CALCULATOR_CAP = 0.05  # the shipped text PRM's; written into the manifest


def sample(args: argparse.Namespace) -> None:
    out = Path(args.out)
    written = open_label_rows(out)
    done = written.done
    problems = load_problems(args.data, args.question_key, args.answer_key, args.id_key, args.limit)
    policy = LlamaPolicy(
        PolicyConfig(
            model=args.model,
            n_seq_max=args.n,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            seed=args.seed,
            capture_states=True,
            state_layers=tuple(args.layers),
        )
    )
    for k, problem in enumerate(problems[args.offset :], start=args.offset):
        if problem.id in done:
            continue
        paths = policy.extend([policy.root(problem.question)], args.n, to_end=True)
        policy.release(paths)
        cands = []
        for p in paths:
            c = asdict(to_candidate(p))
            c["correct"] = answers_equal(c["answer"], problem.answer)
            cands.append(c)
        row = {
            "key": problem.id,
            "id": problem.id,
            "question": problem.question,
            "gold": problem.answer,
            "temperature": args.temperature,
            "layers": args.layers,
            "candidates": cands,
        }
        write_row(written, row, paths)
        right = sum(c["correct"] for c in cands)
        print(f"[{k + 1}/{len(problems)}] {problem.id}: {right}/{len(cands)} right", flush=True)


def extract(args: argparse.Namespace) -> None:
    out = Path(args.out)
    written = open_label_rows(out)
    done = written.done
    policy = LlamaPolicy(
        PolicyConfig(
            model=args.model,
            n_seq_max=1,
            capture_states=True,
            max_tokens=1024,
            state_layers=tuple(args.layers),
        )
    )
    for path in args.results:
        for line_no, line in enumerate(open(path, encoding="utf-8")):
            row = json.loads(line)
            key = f"{Path(path).stem}-{line_no}"
            if key in done or not row.get("candidates"):
                continue
            question = row.get("question") or row.get("problem") or ""
            paths = []
            for c in row["candidates"]:
                steps = split_steps(c["text"])
                paths.append(SolutionPath(steps=steps, step_states=policy.states_of(question, steps)))
            for c in row["candidates"]:
                if "correct" not in c:
                    c["correct"] = answers_equal(c.get("answer"), row.get("gold"))
            row = {
                "key": key,
                "id": str(row.get("id", row.get("problem_id"))),
                "question": question,
                "gold": row.get("gold"),
                "layers": args.layers,
                "candidates": row["candidates"],
            }
            write_row(written, row, paths)
            print(f"{key}: {len(paths)} candidates", flush=True)


# -- fitting ----------------------------------------------------------------------------------


def load_dir(directory: str, layers: list[int] | None = None) -> list[dict]:
    """Rows of a state directory, each with ``states``: per candidate an [n_steps, d] array.

    A row's states join the layers it was captured with (``layers``, default the final state
    only); ``layers`` picks some of them, in the order given.
    """
    d = Path(directory)
    rows = []
    for line in (d / "results.jsonl").open(encoding="utf-8"):
        row = json.loads(line)
        paths = load_states(d / "states" / f"{row['key']}.npz")
        captured = row.get("layers") or [-1]
        wanted = layers or captured
        missing = [layer for layer in wanted if layer not in captured]
        if missing:
            raise SystemExit(f"{d}: {row['key']} has no states of layer(s) {missing} (captured: {captured})")
        row["states"] = [
            pick_layers(np.stack(p.step_states), captured, wanted) if p.step_states else np.zeros((0, 1))
            for p in paths
        ]
        row["steps"] = [p.steps for p in paths]
        row["layers"] = wanted
        rows.append(row)
    return rows


def load_layers(file: str | Path, captured: list[int], wanted: list[int]) -> list[SolutionPath]:
    """Kept paths (:func:`edgetts.probe.load_states`) with each step state cut from the
    ``captured`` layers to the ``wanted`` ones (what a probe of those layers reads)."""
    paths = load_states(file)
    for path in paths:
        if path.step_states:
            path.step_states = list(pick_layers(np.vstack(path.step_states), captured, wanted))
    return paths


def pick_layers(states: np.ndarray, captured: list[int], wanted: list[int]) -> np.ndarray:
    """Columns of ``wanted`` layers from states that join the ``captured`` ones (equal widths)."""
    if wanted == captured:
        return states
    if not wanted:  # a head on confidence features alone
        return states[:, :0]
    width = states.shape[1] // len(captured)
    return np.hstack([states[:, k * width : (k + 1) * width] for k in map(captured.index, wanted)])


def step_data(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Every step state with its sample's outcome label."""
    X = [s for r in rows for st in r["states"] for s in st]
    y = [
        float(c["correct"])
        for r in rows
        for c, st in zip(r["candidates"], r["states"], strict=True)
        for _ in st
    ]
    return np.stack(X), np.array(y)


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float, iters: int = 30) -> tuple[np.ndarray, float]:
    """Class-balanced L2 logistic regression (Newton's method) on standardised features.

    Returns ``(w, b)`` folded back to raw states: ``score = sigmoid(x @ w + b)``. The loss is the
    mean class-balanced log loss plus ``l2 * |w|^2`` (the bias is not penalised).
    """
    mu, sd = X.mean(0), X.std(0) + 1e-4
    Z = np.hstack([(X - mu) / sd, np.ones((len(X), 1))])
    pos = float(np.clip(y.mean(), 0.05, 0.95))
    weight = np.where(y > 0, 0.5 / pos, 0.5 / (1 - pos)) / len(y)
    penalty = np.full(Z.shape[1], 2 * l2)
    penalty[-1] = 0.0
    theta = np.zeros(Z.shape[1])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(Z @ theta)))
        grad = Z.T @ (weight * (p - y)) + penalty * theta
        hess = (Z * (weight * p * (1 - p))[:, None]).T @ Z + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-6:
            break
    w_raw = theta[:-1] / sd
    return w_raw, float(theta[-1] - mu @ w_raw)


def head_scores(
    rows: list[dict], w: np.ndarray, b: float, calculator_cap: float | None = CALCULATOR_CAP
) -> list[list[list[float]]]:
    """Step scores of every candidate of ``rows`` as the runtime computes them: the head, then
    (unless ``calculator_cap`` is None) the calculator check."""
    from edgetts.prm import calculator_capped

    out = []
    for r in rows:
        per_cand = [list(1 / (1 + np.exp(-(st @ w + b)))) if len(st) else [] for st in r["states"]]
        if calculator_cap is not None:
            per_cand = [
                calculator_capped(steps, sc, calculator_cap)
                for steps, sc in zip(r["steps"], per_cand, strict=True)
            ]
        out.append(per_cand)
    return out


def held_out_scores(rows: list[dict], l2: float, folds: int, seed: int = 0) -> list[list[list[float]]]:
    """Every row's scores from a head fitted without its problem (grouped ``folds``-fold)."""
    questions = sorted({r["question"] for r in rows})
    np.random.default_rng(seed).shuffle(questions)
    fold_of = {q: i % folds for i, q in enumerate(questions)}
    scores: list[list[list[float]]] = [[] for _ in rows]
    for k in range(folds):
        train = [r for r in rows if fold_of[r["question"]] != k]
        test = [i for i, r in enumerate(rows) if fold_of[r["question"]] == k]
        w, b = fit_logistic(*step_data(train), l2)
        for i, sc in zip(test, head_scores([rows[i] for i in test], w, b), strict=True):
            scores[i] = sc
    return scores


def export(
    out: Path,
    w: np.ndarray,
    b: float | np.ndarray,
    manifest: dict,
    hidden_layer: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """A probe directory: the head as an ONNX graph and its manifest.

    ``w`` ([d] or [d, k]) and ``b`` are the first Gemm's weights; alone they give the logit (a
    linear head, one ``Gemm``). ``hidden_layer`` (W2 [k, 1], B2 [1]) makes it an MLP:
    Gemm, Relu, Gemm."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d = len(w)
    W1 = np.asarray(w, dtype=np.float32).reshape(d, -1)
    inits = [
        numpy_helper.from_array(W1, "W1"),
        numpy_helper.from_array(np.atleast_1d(b).astype(np.float32), "B1"),
    ]
    if hidden_layer is None:
        nodes = [helper.make_node("Gemm", ["hidden", "W1", "B1"], ["logit"])]
    else:
        W2, B2 = (np.asarray(a, dtype=np.float32) for a in hidden_layer)
        inits += [numpy_helper.from_array(W2, "W2"), numpy_helper.from_array(B2, "B2")]
        nodes = [
            helper.make_node("Gemm", ["hidden", "W1", "B1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Gemm", ["r", "W2", "B2"], ["logit"]),
        ]
    graph = helper.make_graph(
        nodes,
        "policy_probe",
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", d])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["batch", 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, out / "model.onnx")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


def fit(args: argparse.Namespace) -> None:
    from eval_prm import selection_accuracy

    from edgetts.metadata import read_metadata
    from edgetts.models import resolve

    dev = [r for d in args.dev for r in load_dir(d, args.layers)]
    dev_questions = {r["question"] for r in dev}
    train = [r for d in args.train for r in load_dir(d, args.layers) if r["question"] not in dev_questions]
    if not args.folds and not dev:
        raise SystemExit("give --dev runs to judge on, or --folds K for cross-validation")
    layers = (dev or train)[0]["layers"]
    if any(r["layers"] != layers for r in train + dev):
        raise SystemExit("the state directories hold different layers: pick them with --layers")
    # With --folds the strength is picked by grouped cross-validation over train + dev (steadier
    # than a few dozen dev problems) and the head is fitted on all of it; else on train, judged
    # on dev.
    pool = train + dev if args.folds else dev
    where = (
        f"{args.folds}-fold cross-validation by problem over {len(pool)} runs"
        if args.folds
        else f"{len(dev)} held-out runs ({', '.join(args.dev)})"
    )
    X, y = step_data(train)
    print(
        f"train: {len(train)} runs, {len(X)} step states, {y.mean():.2f} positive; judged on {where}",
        flush=True,
    )
    results = []
    for l2 in args.l2:
        if args.folds:
            scores = held_out_scores(pool, l2, args.folds)
        else:
            scores = head_scores(dev, *fit_logistic(X, y, l2))
        res = {agg: selection_accuracy(pool, scores, agg) for agg in ("last", "min", "prod")}
        results.append((max(res[a]["pair_auc"] or 0 for a in res), l2, res))
        print(
            json.dumps(
                {
                    "l2": l2,
                    **{
                        a: {k: round(v, 1) for k, v in r.items() if isinstance(v, float)}
                        for a, r in res.items()
                    },
                }
            ),
            flush=True,
        )
    _, l2, res = max(results, key=lambda t: t[0])
    agg = max(res, key=lambda a: res[a]["pair_auc"] or 0)
    final = train + dev if args.folds else train
    X, y = step_data(final)
    w, b = fit_logistic(X, y, l2)
    meta = read_metadata(resolve(args.model))
    manifest = {
        "kind": "policy_probe",
        "name": Path(args.out).name,
        "hidden_size": int(len(w)),
        "layers": layers,
        "policy": {"name": meta.name, "n_embd": meta.n_embd, "file": Path(resolve(args.model)).name},
        "input_name": "hidden",
        "output_name": "logit",
        "default_aggregation": agg,
        "calculator_check": True,
        "calculator_cap": CALCULATOR_CAP,
        "model_file": "model.onnx",
        "training": {
            "data": f"{len(final)} runs of the policy's own samples "
            f"({', '.join(args.train + (args.dev if args.folds else []))}), {len(X)} step "
            "states, outcome labels (1 on every step of a sample whose answer is right)",
            "picked_on": f"{where}: l2 {l2}, aggregation {agg!r}",
            "held_out_selection": res[agg],
            **({"note": args.note} if args.note else {}),
        },
    }
    export(Path(args.out), w, b, manifest)
    print(f"wrote {args.out} (l2 {l2}, aggregation {agg})", flush=True)


def layers(args: argparse.Namespace) -> None:
    """Which captured layer probes best: grouped cross-validation of a head on each one alone."""
    from eval_prm import selection_accuracy

    every = [r for d in args.train for r in load_dir(d)]  # read once: a sampler may be appending
    captured = every[0]["layers"]
    print(f"{'layers':>12} {'pair AUC':>9} {'weighted':>9} {'best':>6} {'majority':>9}  (l2, aggregation)")
    for choice in [[layer] for layer in captured]:  # joined layers: fit --layers (Newton is O(d^3))
        rows = [{**r, "states": [pick_layers(st, captured, choice) for st in r["states"]]} for r in every]
        best = None
        for l2 in args.l2:
            scores = held_out_scores(rows, l2, args.folds)
            for agg in ("last", "min", "prod"):
                res = selection_accuracy(rows, scores, agg)
                if best is None or (res["pair_auc"] or 0) > (best[0]["pair_auc"] or 0):
                    best = (res, l2, agg)
        res, l2, agg = best
        print(
            f"{' '.join(map(str, choice)):>12} {res['pair_auc']:9.1f} {res['prm_weighted']:9.1f} "
            f"{res['prm_best']:6.1f} {res['majority']:9.1f}  ({l2}, {agg}; {len(rows)} runs)",
            flush=True,
        )


def judge(args: argparse.Namespace) -> None:
    """Probe against majority (and a text PRM) on bench_strategies samples with kept states."""
    from eval_prm import selection_accuracy

    from edgetts.prm import PRMScorer
    from edgetts.probe import ProbeScorer

    samples = Path(args.samples)
    folder = samples.with_name(samples.name.removesuffix(".samples.jsonl") + ".states")
    rows = [json.loads(line) for line in samples.open(encoding="utf-8")]
    rows = [r for r in rows if (folder / f"{r['problem_id']}.npz").is_file()]
    probe = ProbeScorer.load(args.prm, threads=1)
    report = {}
    scores = [probe.score(r["question"], load_states(folder / f"{r['problem_id']}.npz")) for r in rows]
    report[args.prm] = selection_accuracy(rows, scores, args.agg or probe.default_aggregation)
    for text_prm in args.text_prm:
        scorer = PRMScorer.load(text_prm, threads=1)
        scores = [
            scorer.score_steps(r["question"], [split_steps(c["text"]) for c in r["candidates"]]) for r in rows
        ]
        report[text_prm] = selection_accuracy(rows, scores, args.agg or scorer.default_aggregation)
    print(f"{len(rows)} problems with kept states in {folder}")
    print(json.dumps(report, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample", help="sample the policy with its step states captured")
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--limit", type=int, default=None)
    s.add_argument("--offset", type=int, default=0, help="skip the first OFFSET problems")
    s.add_argument("-n", "--n", type=int, default=8)
    s.add_argument("--temperature", type=float, default=0.3)
    s.add_argument("--max-tokens", type=int, default=512)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--question-key", default=None)
    s.add_argument("--answer-key", default=None)
    s.add_argument("--id-key", default=None)
    e = sub.add_parser("extract", help="step states of samples written earlier (a prefill each)")
    e.add_argument("--results", nargs="+", required=True)
    e.add_argument("--out", required=True)
    f = sub.add_parser("fit", help="fit the head, pick L2 on dev, export ONNX and manifest")
    f.add_argument("--train", nargs="+", required=True)
    f.add_argument("--dev", nargs="*", default=[], help="held-out runs (optional with --folds)")
    f.add_argument("--out", required=True)
    f.add_argument("--l2", type=float, nargs="+", default=[0.001, 0.003, 0.01, 0.03, 0.1, 0.3])
    f.add_argument(
        "--folds",
        type=int,
        default=0,
        help="pick L2 by grouped K-fold CV over train + dev, fit on all (0: judge on dev)",
    )
    f.add_argument("--note", default=None, help="what the data is, for the manifest's training.note")
    c = sub.add_parser("layers", help="grouped CV of a head on each captured layer alone")
    c.add_argument("--train", nargs="+", required=True)
    c.add_argument("--folds", type=int, default=5)
    c.add_argument("--l2", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3])
    j = sub.add_parser("judge", help="selection on bench samples with kept states, vs majority")
    j.add_argument("--samples", required=True, help="bench_strategies <out>.samples.jsonl")
    j.add_argument("--prm", required=True, help="probe directory")
    j.add_argument("--text-prm", nargs="*", default=[], help="text PRMs to judge on the same rows")
    j.add_argument("--agg", choices=["last", "min", "prod"], default=None)
    for p in (s, e):
        p.add_argument(
            "--layers",
            type=int,
            nargs="+",
            default=[-1],
            help="what a step state joins: -1 the final hidden state, i >= 0 block i's "
            "output (capture several, then pick with fit --layers)",
        )
    f.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=None,
        help="fit on these of the captured layers (default: all of them)",
    )
    for p in (s, e, f):
        p.add_argument("-m", "--model", default=None, help="policy (default: the default model)")
    args = ap.parse_args()
    {"sample": sample, "extract": extract, "fit": fit, "layers": layers, "judge": judge}[args.cmd](args)


if __name__ == "__main__":
    main()
