"""Fit the compute-optimal table that strategy "auto" looks up (``edgetts/assets/compute_optimal.json``).

Input: ``tools/bench_strategies.py`` rows, one JSON line per (problem, strategy, N) with
``correct`` and ``difficulty_features`` (agreement / PRM scores of the first 4 samples, which is
exactly what auto computes from its probes). Each problem is put in a difficulty bin by those
features (bins: ``edgetts.search.auto.DEFAULT_BINS``); for every bin and budget B (each N seen in
the rows) the entry starts as auto's default rule, weighted best-of-N at the full budget, unless
over *all* problems another (strategy, n <= B) is right on at least ``--min-gain`` more of them
and a one-sided sign test on the problems where the two disagree passes at ``--alpha`` (then the
best one, ties to the smaller n, then to majority, which needs no PRM). A bin moves away from it
only to a choice that beats it the same way on the bin's problems:
on a few dozen problems per bin, smaller differences are noise, and chasing them (a cheaper choice
that tied in-sample included) made the leave-one-out choices worse than the fixed strategy:
leaving out a problem that one of two near-tied choices gets right tips the fit to the other. A bin
with fewer than ``--min-problems`` problems keeps the overall choice (marked ``pooled``).

    python tools/fit_compute_optimal.py runs/bench_gsm8k.jsonl --out edgetts/assets/compute_optimal.json
    python tools/fit_compute_optimal.py runs/bench_gsm8k.jsonl --eval   # auto vs fixed table
    python tools/fit_compute_optimal.py runs/bench_gsm8k.jsonl --eval --plot auto.png
    python tools/fit_compute_optimal.py a.jsonl b.jsonl --eval --require beam_search:4

``--require STRATEGY:N`` keeps only the problems benched with that configuration, so that a
strategy run on a subset (the tree searches are slow) takes part in the fit and the comparison.

``--eval`` compares auto with every fixed strategy at each budget N, out of sample: each problem's
choice comes from a table fitted on all the *other* problems (leave-one-out), so auto gets no
credit for having seen the answer. Generated tokens per problem are printed beside accuracy
(auto's include its probes when the choice is a tree search, which cannot reuse them).

With no rows at all the table is written empty and says so: auto then uses its default rule.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

from paired import sign_test_p
from plots import accuracy_axes, accuracy_curve, dodged, save_accuracy_plot, standard_error

from edgetts.search.auto import DEFAULT_BINS, PROBE_N, ComputeOptimalTable, continuable
from edgetts.search.registry import names

SAMPLE_STRATEGIES = names("sample")
AUTO_CHOICES = continuable()

DEFAULT_STRATEGY = "weighted_best_of_n"  # auto's rule without a table (with a PRM)
STRATEGY_ORDER = ("majority", "weighted_best_of_n", "best_of_n", "dvts", "beam_search")


def load_rows(paths: list[str], model: str | None) -> list[dict]:
    rows = []
    for path in paths:
        opener = gzip.open if path.endswith(".gz") else open  # the page keeps some rows gzipped
        with opener(path, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
        for line in lines:
            if line.strip():
                row = json.loads(line)
                if row.get("strategy") != "greedy" and (model is None or row.get("model") == model):
                    rows.append(row)
    return rows


def by_problem(rows: list[dict]) -> dict[str, dict]:
    """problem key -> {"features": ..., "correct": {(strategy, n): bool}}."""
    problems: dict[str, dict] = defaultdict(lambda: {"features": {}, "correct": {}, "tokens": {}})
    for r in rows:
        p = problems[f"{r.get('dataset')}/{r['problem_id']}"]
        if r.get("difficulty_features"):
            p["features"] = r["difficulty_features"]
        p["correct"][r["strategy"], int(r["n"])] = bool(r["correct"])
        p["tokens"][r["strategy"], int(r["n"])] = int(r.get("tokens_generated") or 0)
    return {k: v for k, v in problems.items() if v["features"]}


def parse_required(specs: list[str]) -> list[tuple[str, int]]:
    """``["beam_search:4"]`` -> ``[("beam_search", 4)]``."""
    required = []
    for spec in specs:
        strategy, _, n = spec.partition(":")
        if not n.isdigit():
            raise SystemExit(f"--require wants STRATEGY:N (e.g. beam_search:4), got {spec!r}")
        required.append((strategy, int(n)))
    return required


def best_entry(problems: list[dict], budget: int) -> dict | None:
    """The (strategy, n <= budget) with the highest accuracy over ``problems``."""
    # Auto always draws its probes and picks over them, so fewer samples is not a choice it has.
    floor = min(PROBE_N, budget)
    keys = {
        k
        for p in problems
        for k in p["correct"]
        if k[1] <= budget
        and (k[0] not in SAMPLE_STRATEGIES or k[1] >= floor)
        and k[0] in AUTO_CHOICES  # what auto can continue with (edgetts.search.auto.continuable)
    }
    scored = []
    for strategy, n in keys:
        results = [p["correct"][strategy, n] for p in problems if (strategy, n) in p["correct"]]
        if len(results) < len(problems):  # compare only configurations every problem has
            continue
        order = STRATEGY_ORDER.index(strategy) if strategy in STRATEGY_ORDER else len(STRATEGY_ORDER)
        scored.append((-statistics.fmean(results), n, order, strategy))
    if not scored:
        return None
    acc, n, _, strategy = min(scored)
    return {"strategy": strategy, "n": n, "accuracy": round(-acc, 4), "problems": len(problems)}


def beats(
    problems: list[dict], challenger: tuple[str, int], incumbent: tuple[str, int], min_gain: int, alpha: float
) -> bool:
    """Whether ``challenger`` is right on at least ``min_gain`` more problems than ``incumbent``
    and a one-sided sign test on the problems where they disagree says so at level ``alpha``."""
    wins = sum(p["correct"][challenger] and not p["correct"][incumbent] for p in problems)
    losses = sum(p["correct"][incumbent] and not p["correct"][challenger] for p in problems)
    return wins - losses >= min_gain and sign_test_p(wins, losses, two_sided=False) < alpha


def overall_entry(problems: list[dict], budget: int, min_gain: int, alpha: float) -> dict | None:
    """The choice for every bin at ``budget``: auto's default rule (weighted best-of-N at the full
    budget) unless the best configuration beats it (see :func:`beats`)."""
    best = best_entry(problems, budget)
    default = (DEFAULT_STRATEGY, budget)
    if best is None or not all(default in p["correct"] for p in problems):
        return best
    if beats(problems, (best["strategy"], best["n"]), default, min_gain, alpha):
        return best
    hits = sum(p["correct"][default] for p in problems)
    return {
        "strategy": DEFAULT_STRATEGY,
        "n": budget,
        "accuracy": round(hits / len(problems), 4),
        "problems": len(problems),
    }


def bin_entry(
    group: list[dict], everyone: list[dict], budget: int, min_gain: int, alpha: float
) -> dict | None:
    """The bin's entry at ``budget``: the overall choice unless the bin's own best beats it there."""
    overall, local = overall_entry(everyone, budget, min_gain, alpha), best_entry(group, budget)
    if overall is None or local is None:
        return local or overall
    key = (overall["strategy"], overall["n"])
    if not all(key in p["correct"] for p in group):
        return local
    if beats(group, (local["strategy"], local["n"]), key, min_gain, alpha):
        return local
    hits = sum(p["correct"][key] for p in group)
    return {**overall, "accuracy": round(hits / len(group), 4), "problems": len(group), "overall": True}


def fit(
    problems: list[dict], min_problems: int, min_gain: int = 2, alpha: float = 0.05
) -> tuple[dict, dict[str, list[dict]]]:
    """Table entries per bin and budget from per-problem results (see the module doc)."""
    table = ComputeOptimalTable()
    binned: dict[str, list[dict]] = defaultdict(list)
    for p in problems:
        binned[table.bin_of(p["features"])].append(p)
    budgets = sorted({n for p in problems for _, n in p["correct"]})
    entries: dict[str, dict] = {}
    for b in DEFAULT_BINS:
        name, group = b["name"], binned.get(b["name"], [])
        pooled = len(group) < min_problems
        row = {}
        for budget in budgets:
            entry = (
                overall_entry(problems, budget, min_gain, alpha)
                if pooled
                else bin_entry(group, problems, budget, min_gain, alpha)
            )
            if entry:
                row[str(budget)] = {**entry, "pooled": pooled, "bin_problems": len(group)}
        if row:
            entries[name] = row
    return {"entries": entries, "budgets": budgets, "n_problems": len(problems)}, binned


def auto_outcome(table: ComputeOptimalTable, p: dict, budget: int) -> tuple[bool, int]:
    """(correct, generated tokens) of auto's choice for problem ``p`` at ``budget``."""
    choice = table.choose(p["features"], budget, have_prm=True)
    n = choice.n
    if choice.strategy in SAMPLE_STRATEGIES:  # auto always draws its probes and picks over them too
        n = max(n, min(PROBE_N, budget))
    key: tuple[str, int] | None = (choice.strategy, n)
    if key not in p["correct"]:  # fall back to the largest n <= budget benched
        ns = [n for s, n in p["correct"] if s == choice.strategy and n <= budget]
        key = (choice.strategy, max(ns)) if ns else None
    if key is None:
        return False, 0
    tokens = p["tokens"].get(key, 0)
    if choice.strategy not in SAMPLE_STRATEGIES:  # a tree search starts over after the probes
        tokens += p["tokens"].get(("majority", PROBE_N), 0)
    return bool(p["correct"].get(key)), tokens


def evaluate(
    problems: list[dict], budgets: list[int], min_problems: int, min_gain: int = 2, alpha: float = 0.05
) -> dict[str, list[tuple]]:
    """Auto, leave-one-out, against every fixed strategy at the same budget N; prints the table.

    Returns strategy -> [(N, mean generated tokens, accuracy)] for the points on every problem.
    """
    fixed = sorted({s for p in problems for s, _ in p["correct"]})
    curves: dict[str, list[tuple]] = defaultdict(list)
    print(
        f"{len(problems)} problems; accuracy ± one standard error (mean generated tokens); "
        "auto is leave-one-out; - : not run on every problem (no fair comparison)"
    )
    print(f"{'N':>3} {'auto':>22} " + " ".join(f"{s:>22}" for s in fixed))
    for budget in budgets:
        outcomes = []
        for i, p in enumerate(problems):
            others = problems[:i] + problems[i + 1 :]
            table = ComputeOptimalTable(entries=fit(others, min_problems, min_gain, alpha)[0]["entries"])
            outcomes.append(auto_outcome(table, p, budget))
        hits, tokens = [o[0] for o in outcomes], [o[1] for o in outcomes]
        curves["auto"].append((budget, statistics.fmean(tokens), statistics.fmean(hits)))
        cells = [cell(hits, tokens, 22)]
        for s in fixed:
            if not all((s, budget) in p["correct"] for p in problems):
                cells.append(f"{'-':>22}")
                continue
            hits = [p["correct"][s, budget] for p in problems]
            tokens = [p["tokens"][s, budget] for p in problems]
            curves[s].append((budget, statistics.fmean(tokens), statistics.fmean(hits)))
            cells.append(cell(hits, tokens, 22))
        print(f"{budget:>3} " + " ".join(cells))
    return dict(curves)


def plot(curves: dict[str, list[tuple]], path: str, n_problems: int) -> None:
    """Accuracy against mean generated tokens: auto is worth it where its line lies above."""
    fig, ax = accuracy_axes()
    ordered = sorted(curves.items(), key=lambda kv: kv[0] != "auto")
    for index, (strategy, points) in enumerate(ordered):
        budgets, tokens, accuracy = zip(*points, strict=True)
        xs = dodged(tokens, index, len(ordered))
        style = {"color": "black", "linewidth": 2.5} if strategy == "auto" else {"alpha": 0.8}
        # every point is over all n_problems (evaluate keeps only those), so one count serves
        accuracy_curve(
            ax, xs, accuracy, [n_problems] * len(points), label=strategy.replace("_", " "), **style
        )
        for n, x, y in zip(budgets, xs, accuracy, strict=True):
            ax.annotate(f"{n}", (x, y), textcoords="offset points", xytext=(3, -10), fontsize=7)
    save_accuracy_plot(
        fig,
        ax,
        path,
        "mean generated tokens per problem, log scale (labels: budget N)",
        f"auto (leave-one-out) against fixed strategies, {n_problems} problems",
    )


def cell(hits: list[bool], tokens: list[int], width: int) -> str:
    if not hits:
        return f"{'-':>{width}}"
    accuracy = statistics.fmean(hits)
    se = standard_error(accuracy, len(hits))
    return f"{accuracy:.1%}±{se:.1%} ({statistics.fmean(tokens):.0f})".rjust(width)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="*", help="bench_strategies.py JSONL files")
    ap.add_argument("--out", default=None, help="where to write the table")
    ap.add_argument("--model", default=None, help="only rows of this policy")
    ap.add_argument("--min-problems", type=int, default=8)
    ap.add_argument(
        "--min-gain",
        type=int,
        default=2,
        help="problems a choice must win over the one it replaces (default rule, or a bin's)",
    )
    ap.add_argument(
        "--alpha",
        type=float,
        default=0.05,
        help="level of the one-sided sign test a replacement must also pass",
    )
    ap.add_argument("--eval", action="store_true", help="print auto vs fixed accuracy per budget")
    ap.add_argument("--plot", default=None, help="with --eval: PNG of accuracy against tokens")
    ap.add_argument(
        "--require",
        nargs="*",
        default=[],
        metavar="STRATEGY:N",
        help="only problems benched with these configurations (e.g. beam_search:4)",
    )
    args = ap.parse_args()
    rows = load_rows(args.results, args.model)
    required = parse_required(args.require)
    problems = [p for p in by_problem(rows).values() if all(k in p["correct"] for k in required)]
    fitted, binned = fit(problems, args.min_problems, args.min_gain, args.alpha)
    note = (
        f"fitted from bench_strategies.py results: {fitted['n_problems']} problems, {len(rows)} "
        "rows; ties go to the smaller n, then to majority, so a small bench that cannot tell "
        "strategies apart yields cheap choices: re-fit from a full bench run"
        if fitted["entries"]
        else "no bench results were available when this was written: the table is empty and auto "
        "uses its default rule (weighted best-of-N at the full budget; majority without a PRM)"
    )
    doc = {
        "format_version": 1,
        "note": note,
        "fitted_from": [Path(p).name for p in args.results],
        "model": args.model,
        "rows": len(rows),
        "n_problems": fitted["n_problems"],
        "bin_sizes": {b["name"]: len(binned.get(b["name"], [])) for b in DEFAULT_BINS},
        "features": "difficulty_features of the first 4 samples (agreement, prm_mean)",
        "bins": [dict(b) for b in DEFAULT_BINS],
        "budgets": fitted["budgets"],
        "table": fitted["entries"],
        "fitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    text = json.dumps(doc, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
        print(f"wrote {args.out}: {fitted['n_problems']} problems, bins {doc['bin_sizes']}")
    else:
        print(text)
    if args.eval and fitted["entries"]:
        curves = evaluate(problems, fitted["budgets"], args.min_problems, args.min_gain, args.alpha)
        if args.plot:
            plot(curves, args.plot, len(problems))


if __name__ == "__main__":
    main()
