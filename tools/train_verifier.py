"""Fit and judge policy probes on the label sources of ``tools/label_steps.py`` (issue 19).

A probe reads, per step, some of the captured layers' states and (optionally) the step's token
confidence features; it is a logistic head or a one-hidden-layer MLP, trained with torch and
exported as a small ONNX graph (standardisation folded into the first layer), so the runtime
stays onnxruntime only. Labels:

* ``prmbench``: human step labels (1 while the solution is still right, 0 from the first error);
* ``outcome``: every step of a sample gets its final answer's grade (what the shipped probe used);
* ``rollout``: Monte-Carlo labels, the share of rollouts from that step that end right
  (``rollout_outcome``: the same solutions with their outcome label on every step).

Judged on held-out N-sample sets (``label_steps.py sample`` directories, e.g. the bench's
GSM8K-test and MAWPS problems) by pair AUC and the selections of ``eval_prm.selection_accuracy``;
an outcome-labelled eval set can also train the probe for its *other* problems (grouped K-fold,
``--cv-outcome``), so every score is held out by problem::

    python tools/train_verifier.py ablate --prmbench runs/labels/prmbench \\
        --eval runs/labels/mawps runs/labels/gsm8k_test --cv-outcome 5
    python tools/train_verifier.py --prmbench runs/labels/prmbench --outcome runs/labels/gsm8k_train \\
        --features all+conf --hidden 0 --export edgetts/assets/prm-probe-qwen05-v2

Torch is needed here only (the dev extra); one thread by default (``--threads``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_probe  # noqa: E402
from eval_prm import GRID, first_below, prf, selection_accuracy  # noqa: E402
from train_probe import pick_layers  # noqa: E402

from edgetts.arithmetic import calculator_capped  # noqa: E402
from edgetts.confidence import STEP_FEATURES  # noqa: E402
from edgetts.probe import ProbeScorer, load_states  # noqa: E402

CALCULATOR_CAP = 0.05


@dataclass
class Solution:
    """One labelled solution: its step states (all captured layers), statistics and labels."""

    group: str  # problem id: folds never split a problem
    source: str
    states: np.ndarray  # [n_steps, n_embd * len(captured layers)]
    stats: np.ndarray  # [n_steps, len(STEP_FEATURES)]
    labels: np.ndarray  # [n_steps] in [0, 1]
    steps: list[str]


@dataclass
class EvalRow:
    """One problem's N samples: the row as written (candidates, gold) and their Solutions."""

    row: dict
    solutions: list[Solution]


def read_rows(directory: str) -> list[dict]:
    """The rows of a label directory that have their states (``label_steps.py restore`` skips
    rows it cannot rebuild exactly; those are left out here, and counted on stderr)."""
    with (Path(directory) / "results.jsonl").open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    kept = [r for r in rows if (Path(directory) / "states" / f"{r['key']}.npz").exists()]
    if len(kept) < len(rows):
        print(
            f"{directory}: {len(rows) - len(kept)} of {len(rows)} rows have no states, left out",
            file=sys.stderr,
        )
    return kept


def load_step_labelled(directory: str) -> list[Solution]:
    """PRMBench or rollout rows (one solution each, step labels)."""
    out = []
    for row in read_rows(directory):
        (path,) = load_states(Path(directory) / "states" / f"{row['key']}.npz")
        out.append(
            Solution(
                # a rollout's problem is named as its outcome rows name it (load_samples)
                group=f"{row['dataset']}-{row['id']}"
                if row["source"] == "rollout"
                else str(row.get("idx") or row.get("id")),
                source=row["source"],
                states=np.stack(path.step_states),
                stats=np.asarray(row["step_stats"], dtype=np.float32).reshape(-1, len(STEP_FEATURES)),
                labels=np.asarray(row["labels"], dtype=np.float32),
                steps=path.steps,
            )
        )
    return out


def load_samples(directory: str) -> list[EvalRow]:
    """``label_steps.py sample`` rows: N samples of a problem, outcome labels on every step."""
    out = []
    for row in read_rows(directory):
        paths = load_states(Path(directory) / "states" / f"{row['key']}.npz")
        sols = []
        for cand, path in zip(row["candidates"], paths, strict=True):
            n = len(path.steps)
            stats = np.asarray(cand["step_stats"], dtype=np.float32).reshape(-1, len(STEP_FEATURES))
            width = sum(len(s) for s in path.step_states[:1]) or 1
            sols.append(
                Solution(
                    group=f"{row['dataset']}-{row['id']}",
                    source="outcome",
                    states=np.stack(path.step_states) if n else np.zeros((0, width), np.float32),
                    stats=stats,
                    labels=np.full(n, float(cand["correct"]), dtype=np.float32),
                    steps=path.steps,
                )
            )
        out.append(EvalRow(row=row, solutions=sols))
    return out


def features(sol: Solution, captured: list[int], layers: list[int], conf: bool) -> np.ndarray:
    """The probe's input for a solution: the chosen layers' states, then the statistics."""
    parts = [pick_layers(sol.states, captured, layers)]
    if conf:
        parts.append(sol.stats)
    return np.hstack(parts).astype(np.float32)


def design(sols: list[Solution], captured: list[int], layers: list[int], conf: bool):
    """Step rows of ``sols``: features, labels, and each row's problem (an int per group)."""
    kept = [s for s in sols if len(s.labels)]
    X = np.vstack([features(s, captured, layers, conf) for s in kept])
    y = np.concatenate([s.labels for s in kept])
    ids: dict[str, int] = {}
    g = np.concatenate([np.full(len(s.labels), ids.setdefault(s.group, len(ids))) for s in kept])
    return X, y, g


def within_problem(X: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``X`` minus its problem's mean row, plus the overall mean: what tells a problem's samples
    apart stays, what tells problems apart (how hard the question is) goes. Outcome labels are
    mostly the latter, and a verifier ranks samples of one problem."""
    sums = np.zeros((g.max() + 1, X.shape[1]))
    np.add.at(sums, g, X)
    means = sums / np.bincount(g)[:, None]
    return X - means[g] + X.mean(0)


def parse_head(spec: str) -> tuple[list[int], bool, int, bool]:
    """``FEATURES:MODEL`` (e.g. ``mid+last:linear``): layers, confidence features, hidden width
    (0: linear) and whether to train within problems."""
    feats, model = spec.split(":")
    layers, conf = FEATURE_SETS[feats]
    return (layers, conf, *parse_model(model))


def parse_model(spec: str) -> tuple[int, bool]:
    """``linear``, ``mlpH``, either with ``-within``: (hidden width or 0, train within problems)."""
    name, _, within = spec.partition("-")
    if within not in ("", "within"):
        raise SystemExit(f"unknown model {spec!r}: linear or mlpH, optionally with -within")
    return (0 if name == "linear" else int(name.removeprefix("mlp"))), bool(within)


# -- the model ------------------------------------------------------------------------------


@dataclass
class Head:
    """Fitted weights in raw-feature terms: ``logit = relu(x @ W1 + b1) @ W2 + b2`` (MLP) or
    ``x @ W1 + b1`` (linear, W2 None)."""

    W1: np.ndarray
    b1: np.ndarray
    W2: np.ndarray | None = None
    b2: np.ndarray | None = None

    def logits(self, X: np.ndarray) -> np.ndarray:
        h = X @ self.W1 + self.b1
        if self.W2 is None:
            return h[:, 0]
        return (np.maximum(h, 0) @ self.W2 + self.b2)[:, 0]


def fit(
    X: np.ndarray,
    y: np.ndarray,
    g: np.ndarray,
    hidden: int,
    wd: float,
    within: bool = False,
    epochs: int = 200,
    seed: int = 0,
) -> Head:
    """Class-balanced BCE plus ``wd`` times the squared weights, on standardised features;
    returns raw-feature weights. A linear head is fitted to convergence (L-BFGS, float64): the
    loss is convex, so the head is the one minimum whatever the seed (200 Adam epochs stopped
    short of it, and the torch seed moved held-out pair AUC by up to 4 points). An MLP is not
    convex: full-batch Adam for ``epochs``, from ``seed``.

    ``within``: train on :func:`within_problem` features (``g``: each row's problem); the head
    then reads raw features as if they sat at their problem's mean."""
    if within:
        # A problem whose rows all carry one label says nothing about telling its samples apart.
        lo = np.full(g.max() + 1, np.inf)
        hi = np.full(g.max() + 1, -np.inf)
        np.minimum.at(lo, g, y)
        np.maximum.at(hi, g, y)
        mixed = (hi > lo)[g]
        X, y, g = X[mixed], y[mixed], np.unique(g[mixed], return_inverse=True)[1]
        X = within_problem(X, g)

    mu, sd = X.mean(0), X.std(0) + 1e-4
    pos = float(np.clip((y > 0.5).mean(), 0.05, 0.95))
    weight = np.where(y > 0.5, 0.5 / pos, 0.5 / (1 - pos))
    fitted = _fit_linear if not hidden else partial(_fit_mlp, hidden=hidden, epochs=epochs, seed=seed)
    net = fitted((X - mu) / sd, y, weight, wd)
    first = net[0]
    W1 = first.weight.detach().double().numpy().T / sd[:, None]
    b1 = first.bias.detach().double().numpy() - mu @ W1
    if not hidden:
        return Head(W1.astype(np.float32), b1.astype(np.float32))
    last = net[2]
    return Head(
        W1.astype(np.float32),
        b1.astype(np.float32),
        last.weight.detach().numpy().T.astype(np.float32),
        last.bias.detach().numpy().astype(np.float32),
    )


def _objective(net, Z, t, weight, wd: float):
    """Weighted BCE plus ``wd`` times the squared weights (biases free)."""
    import torch

    loss = torch.nn.functional.binary_cross_entropy_with_logits(net(Z)[:, 0], t, weight=weight)
    return loss + wd * sum((p**2).sum() for name, p in net.named_parameters() if name.endswith("weight"))


def _fit_linear(Z: np.ndarray, y: np.ndarray, weight: np.ndarray, wd: float):
    """The convex case to its minimum: L-BFGS in float64 from zero weights."""
    import torch

    data = [torch.tensor(a, dtype=torch.float64) for a in (Z, y, weight)]
    net = torch.nn.Sequential(torch.nn.Linear(Z.shape[1], 1)).double()
    torch.nn.init.zeros_(net[0].weight)
    torch.nn.init.zeros_(net[0].bias)
    opt = torch.optim.LBFGS(
        net.parameters(),
        max_iter=1000,
        history_size=20,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = _objective(net, *data, wd)
        loss.backward()
        return loss

    opt.step(closure)
    return net


def _fit_mlp(
    Z: np.ndarray, y: np.ndarray, weight: np.ndarray, wd: float, hidden: int, epochs: int, seed: int
):
    """One hidden ReLU layer, full-batch Adam for ``epochs`` from ``seed`` (not convex)."""
    import torch

    torch.manual_seed(seed)
    data = [torch.tensor(a, dtype=torch.float32) for a in (Z, y, weight)]
    net = torch.nn.Sequential(
        torch.nn.Linear(Z.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)
    )
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(epochs):
        opt.zero_grad()
        _objective(net, *data, wd).backward()
        opt.step()
    return net


@dataclass(frozen=True)
class Blend:
    """Average a fitted linear head's logits with another's on the same features: ``weight`` on
    the fitted one. Two linear heads averaged are one linear head, so the blend ships as a
    single ``Gemm`` like either."""

    other: Head
    weight: float

    def __call__(self, head: Head) -> Head:
        if head.W2 is not None or self.other.W2 is not None or head.W1.shape != self.other.W1.shape:
            raise SystemExit("--blend-shipped needs linear heads on the shipped probe's features")
        w = self.weight
        return Head(w * head.W1 + (1 - w) * self.other.W1, w * head.b1 + (1 - w) * self.other.b1)


def read_head(prm: str) -> Head:
    """A linear probe's weights (``Gemm`` initialisers W1, B1) back from its ONNX graph."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(Path(prm) / "model.onnx")).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    if set(weights) != {"W1", "B1"}:
        raise SystemExit(f"{prm}: not a linear probe (initialisers {sorted(weights)})")
    return Head(weights["W1"].astype(np.float32), weights["B1"].astype(np.float32))


def fit_head(sols: list[Solution], captured, layers, conf, hidden, wd, within, blend: Blend | None) -> Head:
    """:func:`fit` on ``sols``' step rows, then blended when ``blend`` says so."""
    head = fit(*design(sols, captured, layers, conf), hidden, wd, within)
    return blend(head) if blend else head


def step_scores(head: Head, sol: Solution, captured, layers, conf, calculator: bool) -> list[float]:
    """The runtime's step scores of a solution: sigmoid of the head, then the calculator check."""
    if not len(sol.labels):
        return []
    s = list(1 / (1 + np.exp(-head.logits(features(sol, captured, layers, conf)))))
    return calculator_capped(sol.steps, s, CALCULATOR_CAP) if calculator else s


def judge(
    head_for, rows: list[EvalRow], captured, layers, conf, aggs=("min", "last", "prod")
) -> dict[str, dict]:
    """Selection metrics on ``rows``; ``head_for(i)`` is the head that scores row i (one fitted
    without that row's problem)."""
    scores = [
        [step_scores(head_for(i), s, captured, layers, conf, True) for s in r.solutions]
        for i, r in enumerate(rows)
    ]
    return {a: selection_accuracy([r.row for r in rows], scores, a) for a in aggs}


def subset_problems(rows: list[EvalRow], k: int | None, seed: int) -> list[EvalRow]:
    """``k`` of ``rows`` (problems) drawn at random with ``seed``, in their original order; all
    of them when ``k`` is None. A learning curve fits on growing subsets (a larger k at the same
    seed holds every problem of a smaller one)."""
    if k is None:
        return rows
    if not 0 < k <= len(rows):
        raise SystemExit(f"--outcome-problems {k}: the --outcome dirs hold {len(rows)} problems")
    order = np.random.default_rng(seed).permutation(len(rows))
    keep = set(order[:k].tolist())
    return [r for i, r in enumerate(rows) if i in keep]


def folds_of(rows: list[EvalRow], k: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rows))
    fold = np.empty(len(rows), dtype=int)
    fold[order] = np.arange(len(rows)) % k
    return fold.tolist()


# -- baselines ------------------------------------------------------------------------------


def shipped_probe(prm: str, rows: list[EvalRow], captured: list[int]) -> dict[str, dict]:
    """The shipped probe on the rows' recorded states (its own layers and aggregation)."""
    from edgetts.search.base import SolutionPath

    probe = ProbeScorer.load(prm, threads=1)
    layers, agg = probe.manifest.layers, probe.manifest.default_aggregation
    scores = []
    for r in rows:
        paths = [
            SolutionPath(steps=s.steps, step_states=list(features(s, captured, layers, False)))
            for s in r.solutions
            if len(s.labels)
        ]
        it = iter(probe.score("", paths))
        scores.append([next(it) if len(s.labels) else [] for s in r.solutions])
    return {agg: selection_accuracy([r.row for r in rows], scores, agg)}


def confidence_baselines(rows: list[EvalRow]) -> dict[str, float]:
    """Majority, DeepConf's vote (lowest-window confidence, 90 % and 10 % kept) and the pair AUC
    of trace confidence alone, from the recorded ``trace_conf``."""
    from edgetts.search.base import Candidate
    from edgetts.search.select import pick_by_confidence

    out: dict[str, float] = {}
    for keep in (1.0, 0.9, 0.5, 0.1):
        hits = []
        for r in rows:
            cands = [Candidate.from_dict(c) for c in r.row["candidates"]]
            conf = [c["trace_conf"]["lowest"] for c in r.row["candidates"]]
            chosen, _ = pick_by_confidence(cands, conf, keep)
            i = next(k for k, c in enumerate(cands) if c is chosen)
            hits.append(bool(r.row["candidates"][i]["correct"]) and chosen.answer is not None)
        out[f"conf_vote_keep{keep}"] = 100 * float(np.mean(hits))
    scores = [[[c["trace_conf"]["lowest"]] for c in r.row["candidates"]] for r in rows]
    res = selection_accuracy([r.row for r in rows], scores, "last")
    out.update(majority=res["majority"], oracle=res["oracle"], conf_pair_auc=res["pair_auc"])
    return out


# -- step-level judgement on step-labelled solutions (held out by problem) -----------------


def step_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of step scores against 0/1 step labels (ties half), percent."""
    pos, neg = labels > 0.5, labels <= 0.5
    if not pos.any() or not neg.any():
        return float("nan")
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores, kind="mergesort")] = np.arange(1, len(scores) + 1)
    _, tie, count = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.bincount(tie, weights=ranks) / count)[tie]  # ties share their mean rank
    return 100.0 * (ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * neg.sum())


def first_error(labels: np.ndarray) -> int:
    """0-based first step labelled wrong, -1 when none (ProcessBench's label)."""
    wrong = np.flatnonzero(labels <= 0.5)
    return int(wrong[0]) if len(wrong) else -1


def best_threshold(scores: list[np.ndarray], labels: list[int]) -> float:
    return max(GRID, key=lambda t: prf([first_below(list(s), t) for s in scores], labels)["f1"])


def step_cv(
    sols: list[Solution], captured, layers, conf, hidden: int, wd: float, folds: int, within: bool = False
) -> dict:
    """Grouped K-fold over problems: step AUC and ProcessBench-format F1 (threshold picked on each
    fold's training solutions, never on the judged ones)."""
    groups = sorted({s.group for s in sols})
    rng = np.random.default_rng(0)
    fold_of = {g: i % folds for i, g in enumerate(rng.permutation(groups))}
    all_scores, judged, preds = [], [], []
    for k in range(folds):
        train = [s for s in sols if fold_of[s.group] != k]
        test = [s for s in sols if fold_of[s.group] == k]
        head = fit(*design(train, captured, layers, conf), hidden, wd, within)

        def sig(sol: Solution, head: Head = head) -> np.ndarray:
            return 1 / (1 + np.exp(-head.logits(features(sol, captured, layers, conf))))

        t = best_threshold([sig(s) for s in train], [first_error(s.labels) for s in train])
        for sol in test:
            sc = sig(sol)
            all_scores.append(sc)
            judged.append(sol)
            preds.append(first_below(list(sc), t))
    return step_report(all_scores, judged, preds)


def step_report(scores: list[np.ndarray], sols: list[Solution], preds: list[int]) -> dict:
    """Step AUC of per-step ``scores`` of ``sols``, and ProcessBench-format F1 of ``preds`` (each
    solution's predicted first error) against their labels."""
    auc = step_auc(np.concatenate(scores), np.concatenate([s.labels for s in sols]))
    res = prf(preds, [first_error(s.labels) for s in sols])
    return {
        "step_auc": round(auc, 1),
        **{k: round(v, 1) if isinstance(v, float) else v for k, v in res.items()},
    }


def first_error_f1(scores: list[np.ndarray], sols: list[Solution], threshold: float) -> dict:
    """:func:`step_report` with the first step under ``threshold`` as each prediction."""
    return step_report(scores, sols, [first_below(list(sc), threshold) for sc in scores])


def step_heldout(head: Head, dev: list[Solution], test: list[Solution], captured, layers, conf) -> dict:
    """A fitted head on step-labelled solutions of problems it never saw: the threshold picked on
    ``dev``, then step AUC and F1 on ``dev`` (in-sample threshold) and on ``test``. Scores are
    the runtime's: sigmoid, then the calculator check."""
    scores = {
        name: [np.asarray(step_scores(head, s, captured, layers, conf, True)) for s in sols]
        for name, sols in (("dev", dev), ("test", test))
    }
    threshold = best_threshold(scores["dev"], [first_error(s.labels) for s in dev])
    out: dict = {"threshold": threshold}
    for name, sols in (("dev", dev), ("test", test)):
        out[name] = first_error_f1(scores[name], sols, threshold)
    return out


def shipped_step_heldout(prm: str, dev: list[Solution], test: list[Solution], captured) -> dict:
    """The shipped probe on the same held-out solutions, at its manifest threshold and at the
    best one on ``dev``; and the calculator check alone (1, or its cap on a false equation)."""
    probe = ProbeScorer.load(prm, threads=1)
    layers, cap = probe.manifest.layers, probe.manifest.calculator_cap
    out: dict = {}
    for name, sols in (("dev", dev), ("test", test)):
        raw = [probe.score_states(features(s, captured, layers, False)) for s in sols]
        shipped = [
            np.asarray(calculator_capped(s.steps, list(r), cap)) for s, r in zip(sols, raw, strict=True)
        ]
        calc = [np.asarray(calculator_capped(s.steps, [1.0] * len(s.labels), cap)) for s in sols]
        out[name] = {"shipped": shipped, "calculator": calc}
    best = best_threshold(out["dev"]["shipped"], [first_error(s.labels) for s in dev])
    report: dict = {}
    for label, key, threshold in (
        (
            f"shipped probe at its manifest threshold {probe.manifest.threshold}",
            "shipped",
            probe.manifest.threshold,
        ),
        (f"shipped probe at the best dev threshold {best}", "shipped", best),
        ("calculator check alone", "calculator", 0.5),
    ):
        report[label] = {
            name: first_error_f1(out[name][key], sols, threshold)
            for name, sols in (("dev", dev), ("test", test))
        }
    return report


def step_baselines(sols: list[Solution], shipped: str, captured: list[int]) -> dict[str, float]:
    """Step AUC of trivial and current scorers on the step-labelled solutions: the step's position
    (earlier = better: labels are 1 before the first error, so position alone ranks well) and
    the shipped probe (trained on outcomes, never on these)."""
    labels = np.concatenate([s.labels for s in sols])
    position = np.concatenate([-np.arange(len(s.labels), dtype=float) for s in sols])
    probe = ProbeScorer.load(shipped, threads=1)
    layers = probe.manifest.layers
    scores = np.concatenate([probe.score_states(features(s, captured, layers, False)) for s in sols])
    return {
        "position_step_auc": round(step_auc(position, labels), 1),
        "shipped_probe_step_auc": round(step_auc(scores, labels), 1),
    }


# -- commands -------------------------------------------------------------------------------

FEATURE_SETS = {  # name -> (layers, confidence features)
    "last": ([-1], False),
    "last+conf": ([-1], True),
    "mid": ([12], False),
    "mid+last": ([12, -1], False),
    "all": ([6, 12, 18, -1], False),
    "all+conf": ([6, 12, 18, -1], True),
    "conf": ([], True),
}


def run_config(
    train_fixed: list[Solution],
    evals: dict[str, list[EvalRow]],
    captured,
    layers,
    conf,
    hidden: int,
    wd: float,
    cv_outcome: int,
    within: bool = False,
    blend: Blend | None = None,
) -> dict[str, dict]:
    """Fit on ``train_fixed`` and judge each eval set; with ``cv_outcome`` K, the eval sets'
    problems are also dealt into K folds and each fold is judged by a head that trained on the
    other folds' samples (outcome labels) too, so no problem is judged by a head that saw it."""
    rows = [(name, r) for name, rs in evals.items() for r in rs]
    if cv_outcome:
        fold = folds_of([r for _, r in rows], cv_outcome)
        heads = {}
        for k in range(cv_outcome):
            extra = [s for (_, r), f in zip(rows, fold, strict=True) if f != k for s in r.solutions]
            heads[k] = fit_head(train_fixed + extra, captured, layers, conf, hidden, wd, within, blend)
        head_of = [heads[f] for f in fold]
    else:
        head = fit_head(train_fixed, captured, layers, conf, hidden, wd, within, blend)
        head_of = [head] * len(rows)
    out = {}
    for name in evals:
        idx = [i for i, (n, _) in enumerate(rows) if n == name]
        out[name] = judge(
            lambda i, idx=idx: head_of[idx[i]], [rows[i][1] for i in idx], captured, layers, conf
        )
    return out


def ablate(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    if args.shipped == "none" and (
        args.step_cv or args.step_dev or args.step_test or args.blend_shipped is not None
    ):
        raise SystemExit("--shipped none: the step judgements and --blend-shipped need a shipped probe")
    prm = [s for d in args.prmbench for s in load_step_labelled(d)]
    roll = [s for d in args.rollout for s in load_step_labelled(d)]
    outcome_rows = subset_problems(
        [r for d in args.outcome for r in load_samples(d)], args.outcome_problems, args.subset_seed
    )
    outcome_train = [s for r in outcome_rows for s in r.solutions]
    evals = {Path(d).name: load_samples(d) for d in args.eval}
    captured = args.captured
    report: dict = {"baselines": {}, "runs": [], "outcome_problems": len(outcome_rows)}
    for name, rows in evals.items():
        report["baselines"][name] = {
            "n_problems": len(rows),
            **confidence_baselines(rows),
        }
        if args.shipped != "none":  # "none": states of another model, which the probe cannot read
            report["baselines"][name]["shipped_probe"] = shipped_probe(args.shipped, rows, captured)
    print(json.dumps(report["baselines"], indent=1), flush=True)
    if args.step_cv and prm:
        report["step_cv"] = {"baselines": step_baselines(prm, args.shipped, captured)}
        print("step_cv baselines", json.dumps(report["step_cv"]["baselines"]), flush=True)
        for spec in args.step_cv:
            layers, conf, hidden, within = parse_head(spec)
            res = step_cv(prm, captured, layers, conf, hidden, args.wd, args.cv, within)
            report["step_cv"][spec] = res
            print("step_cv", spec, json.dumps(res), flush=True)
    # rollout_outcome: the rolled-out samples with their own outcome on every step instead, so
    # the two label kinds are compared on the very same solutions
    roll_outcome = [replace(s, labels=np.full(len(s.labels), s.labels[-1])) for s in roll]
    sources = {
        "prmbench": prm,
        "rollout": roll,
        "rollout_outcome": roll_outcome,
        "outcome_train": outcome_train,
    }
    blend = None if args.blend_shipped is None else Blend(read_head(args.shipped), args.blend_shipped)
    if args.step_dev or args.step_test:
        if not (args.step_dev and args.step_test):
            raise SystemExit("--step-dev and --step-test go together")
        dev = [s for d in args.step_dev for s in load_step_labelled(d)]
        test = [s for d in args.step_test for s in load_step_labelled(d)]
        seen = {s.group for part in sources.values() for s in part} & {s.group for s in dev + test}
        if seen:
            raise SystemExit(
                f"{len(seen)} held-out step problems are also training problems, e.g. {min(seen)}"
            )
        report["step_heldout"] = {"baselines": shipped_step_heldout(args.shipped, dev, test, captured)}
        for name, res in report["step_heldout"]["baselines"].items():
            print("step_heldout", name, json.dumps(res), flush=True)
        for spec in args.step_heldout:
            src, head_spec = spec.split(":", 1)
            layers, conf, hidden, within = parse_head(head_spec)
            train = [s for part in src.split("+") for s in sources[part]]
            head = fit_head(train, captured, layers, conf, hidden, args.wd, within, blend)
            res = {"train_solutions": len(train), **step_heldout(head, dev, test, captured, layers, conf)}
            report["step_heldout"][spec] = res
            print("step_heldout", spec, json.dumps(res), flush=True)
    for spec in args.configs:
        src, head_spec = spec.split(":", 1)
        layers, conf, hidden, within = parse_head(head_spec)
        train = [s for part in src.split("+") if part != "cv" for s in sources[part]]
        cv = args.cv if "cv" in src else 0
        res = run_config(train, evals, captured, layers, conf, hidden, args.wd, cv, within, blend)
        row = {"config": spec, "train_solutions": len(train), "results": res}
        report["runs"].append(row)
        summary = {
            n: {a: (round(v["pair_auc"], 1), round(v["prm_weighted"], 1)) for a, v in r.items()}
            for n, r in res.items()
        }
        print(spec, json.dumps(summary), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if evals:
        print(markdown(report, list(evals)))
    if "step_heldout" in report:
        print(step_markdown(report["step_heldout"]))


def markdown(report: dict, sets: list[str]) -> str:
    """The ablation as a Markdown table: pair AUC and weighted vote per eval set, aggregation min."""
    head = " | ".join(f"{n} pair AUC | {n} weighted" for n in sets)
    lines = [f"| head | training solutions | {head} |", "|---" * (2 + 2 * len(sets)) + "|"]
    base = [report["baselines"][n] for n in sets]
    lines.append("| majority (no scores) | | " + " | ".join(f"- | {b['majority']:.1f}" for b in base) + " |")
    lines.append(
        "| trace confidence, DeepConf vote (90 % kept) | | "
        + " | ".join(f"{b['conf_pair_auc']:.1f} | {b['conf_vote_keep0.9']:.1f}" for b in base)
        + " |"
    )
    if all("shipped_probe" in b for b in base):
        shipped = [next(iter(b["shipped_probe"].values())) for b in base]
        cells = " | ".join(f"{r['pair_auc']:.1f} | {r['prm_weighted']:.1f}" for r in shipped)
        lines.append(f"| shipped probe (its own layer and aggregation) | | {cells} |")
    for run in report["runs"]:
        cells = " | ".join(
            f"{run['results'][n]['min']['pair_auc']:.1f} | {run['results'][n]['min']['prm_weighted']:.1f}"
            for n in sets
        )
        lines.append(f"| {run['config']} | {run['train_solutions']} | {cells} |")
    return "\n".join(lines)


def step_markdown(results: dict) -> str:
    """The held-out step judgement as a Markdown table (F1 with error / correct accuracy)."""
    lines = [
        "| step scorer | training solutions | threshold | dev step AUC | dev F1 (err / cor) "
        "| test step AUC | test F1 (err / cor) |",
        "|---" * 7 + "|",
    ]

    def cells(r: dict) -> str:
        return f"{r['step_auc']:.1f} | {r['f1']:.1f} ({r['error_acc']:.1f} / {r['correct_acc']:.1f})"

    for name, r in results["baselines"].items():
        lines.append(f"| {name} | | | {cells(r['dev'])} | {cells(r['test'])} |")
    for spec, r in results.items():
        if spec != "baselines":
            row = f"| {spec} | {r['train_solutions']} | {r['threshold']}"
            lines.append(f"{row} | {cells(r['dev'])} | {cells(r['test'])} |")
    return "\n".join(lines)


def export_head(head: Head, out: Path, manifest: dict) -> None:
    """The head as an ONNX graph (Gemm, or Gemm-Relu-Gemm) and its manifest."""
    hidden_layer = None if head.W2 is None else (head.W2, head.b2)
    train_probe.export(out, head.W1, head.b1, manifest, hidden_layer)


def export(args: argparse.Namespace) -> None:
    """Fit one configuration on all the given training data and write the probe directory."""
    import torch

    from edgetts.metadata import read_metadata
    from edgetts.models import resolve

    torch.set_num_threads(args.threads)
    layers, conf = FEATURE_SETS[args.features]
    if not layers:  # the runtime's probe reads states (capture_states needs a layer)
        raise SystemExit(f"--export needs features with a layer's states; {args.features!r} has none")
    sols = [s for d in args.prmbench for s in load_step_labelled(d)]
    sols += [s for d in args.rollout for s in load_step_labelled(d)]
    sols += [s for d in args.outcome for r in load_samples(d) for s in r.solutions]
    X, y, g = design(sols, args.captured, layers, conf)
    head = fit(X, y, g, args.hidden, args.wd, args.within)
    if args.blend_shipped is not None:
        head = Blend(read_head(args.shipped), args.blend_shipped)(head)
    meta = read_metadata(resolve(None))
    feats = list(STEP_FEATURES) if conf else []
    manifest = {
        "kind": "policy_probe",
        "name": Path(args.export).name,
        "hidden_size": int(X.shape[1]),
        "layers": layers,
        "features": feats,
        "policy": {"name": meta.name, "n_embd": meta.n_embd, "file": Path(resolve(None)).name},
        "input_name": "hidden",
        "output_name": "logit",
        "default_aggregation": args.agg,
        "calculator_check": True,
        "calculator_cap": CALCULATOR_CAP,
        "model_file": "model.onnx",
        **({} if args.threshold is None else {"threshold": args.threshold}),
        "training": {
            "data": f"{len(sols)} solutions, {len(X)} step states: "
            + ", ".join(args.prmbench + args.rollout + args.outcome),
            "head": f"hidden {args.hidden}, weight decay {args.wd}"
            + (
                ""
                if args.blend_shipped is None
                else f"; logits averaged with {args.shipped}'s, weight {args.blend_shipped} on this fit"
            ),
            **({"note": args.note} if args.note else {}),
        },
    }
    export_head(head, Path(args.export), manifest)
    print(f"wrote {args.export} ({X.shape[1]} inputs, {len(X)} training steps)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", default=None, help="fit --features/--hidden on all data, write here")
    ap.add_argument("--features", default="last", choices=list(FEATURE_SETS))
    ap.add_argument("--hidden", type=int, default=0)
    ap.add_argument("--within", action="store_true", help="train within problems (see within_problem)")
    ap.add_argument("--agg", default="min", choices=["last", "min", "prod"])
    ap.add_argument("--note", default=None)
    ap.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="with --export: the manifest's first-error threshold (pick it with --step-heldout on dev)",
    )
    ap.add_argument("--prmbench", nargs="*", default=[])
    ap.add_argument("--rollout", nargs="*", default=[])
    ap.add_argument("--outcome", nargs="*", default=[], help="sample dirs used for training only")
    ap.add_argument("--eval", nargs="*", default=[], help="held-out sample dirs")
    ap.add_argument(
        "--outcome-problems",
        type=int,
        default=None,
        metavar="K",
        help="train on K problems of the --outcome dirs, drawn with --subset-seed (a learning curve)",
    )
    ap.add_argument("--subset-seed", type=int, default=0)
    ap.add_argument("--captured", type=int, nargs="+", default=[6, 12, 18, -1])
    ap.add_argument(
        "--shipped",
        default="edgetts/assets/prm-probe-qwen05",
        help="the probe to compare with, or none (states restored through another model)",
    )
    ap.add_argument("--cv", type=int, default=5, help="folds for sources with 'cv' (eval outcome)")
    ap.add_argument("--wd", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--configs",
        nargs="*",
        default=["prmbench:last:linear", "prmbench:all+conf:linear", "cv:last:linear"],
        help="SOURCES:FEATURES:MODEL, SOURCES joined by + from prmbench, rollout, rollout_outcome "
        "(the rolled-out samples, outcome labels), outcome_train, "
        f"cv (the eval sets' other folds); FEATURES one of {list(FEATURE_SETS)}; MODEL linear "
        "or mlpH, either with -within (features minus their problem's mean)",
    )
    ap.add_argument(
        "--step-cv",
        nargs="*",
        default=[],
        help="FEATURES:MODEL configs judged by grouped CV on the PRMBench solutions (step AUC, F1)",
    )
    ap.add_argument(
        "--step-heldout",
        nargs="*",
        default=[],
        help="SOURCES:FEATURES:MODEL heads fitted on SOURCES and judged on step-labelled solutions of "
        "other problems: threshold picked on --step-dev, F1 and step AUC on --step-dev and --step-test",
    )
    ap.add_argument(
        "--step-dev", nargs="*", default=[], help="step-labelled dirs (label_steps prmbench --split dev)"
    )
    ap.add_argument(
        "--step-test", nargs="*", default=[], help="step-labelled dirs (label_steps prmbench --split test)"
    )
    ap.add_argument(
        "--blend-shipped",
        type=float,
        default=None,
        metavar="W",
        help="judge (and export) every fitted head averaged with the shipped probe's logits, W on the "
        "fitted one (linear heads on the shipped probe's features)",
    )
    ap.add_argument("--out", default=None, help="write the full report (JSON) here")
    args = ap.parse_args()
    if args.export:
        export(args)
    else:
        ablate(args)


if __name__ == "__main__":
    main()
