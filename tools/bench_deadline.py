"""How far past its deadline does a solve return? Many short-deadline solves, overrun percentiles.

Each run plans for its deadline (``SolveOptions(deadline_s=...)``, optionally ``memory_mb``), loads
the policy for that plan *before* the clock starts (``Solver.prepare``: model load is excluded by
design, a Solver loads once), then times the whole ``Solver.solve`` call: planning, prefill,
search, PRM calls.
The tolerance is deadline + max(10 %, 0.5 s).

    EDGETTS_THREADS=1 python tools/bench_deadline.py --runs 50 --deadlines 3,5,8 \\
        --data ../shared/data/gsm8k_test.jsonl --out runs/deadline.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from edgetts.data import load_problems
from edgetts.policy import PolicyConfig
from edgetts.scheduler import PlanError
from edgetts.solver import SolveOptions, Solver

STRATEGIES = "auto,majority,weighted_best_of_n,beam_search,dvts"


def tolerance_s(deadline_s: float) -> float:
    return max(0.1 * deadline_s, 0.5)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--deadlines", default="3,5,8", help="seconds, cycled over the runs")
    ap.add_argument("--strategies", default=STRATEGIES, help="cycled over the runs")
    ap.add_argument("--memory-mb", type=float, default=None)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--data", default="../shared/data/gsm8k_test.jsonl")
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=None, help="JSONL of every run")
    args = ap.parse_args()
    deadlines = [float(d) for d in args.deadlines.split(",")]
    strategies = args.strategies.split(",")
    problems = load_problems(args.data, None, None, None, args.runs)
    solver = Solver(PolicyConfig(model=args.model, max_tokens=args.max_tokens))
    rows = []
    for i in range(args.runs):
        problem = problems[i % len(problems)]
        deadline_s = deadlines[i % len(deadlines)]
        strategy = strategies[(i // len(deadlines)) % len(strategies)]
        options = SolveOptions(strategy=strategy, deadline_s=deadline_s, memory_mb=args.memory_mb, seed=i)
        try:
            plan = solver.prepare(problem.question, options)  # models load before the clock starts
        except PlanError as exc:
            print(f"[{i + 1}] {strategy} {deadline_s:g}s: refused: {exc}")
            continue
        start = time.perf_counter()
        result = solver.solve(problem.question, options)
        wall_s = time.perf_counter() - start
        row = {
            "run": i,
            "strategy": result.strategy,
            "n": plan.n,
            "deadline_s": deadline_s,
            "wall_s": round(wall_s, 3),
            "overrun_s": round(wall_s - deadline_s, 3),
            "search_s": result.counters.get("wall_s"),
            "prm_s": result.counters.get("prm_s"),
            "cut_short": result.cut_short,
            "answer": result.answer,
            "within": wall_s <= deadline_s + tolerance_s(deadline_s),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with Path(args.out).open("a") as f:
                f.write(json.dumps(row) + "\n")
    overruns = [r["overrun_s"] for r in rows]
    if not overruns:
        return
    print(f"\n{len(rows)} runs, deadlines {args.deadlines} s, overrun = wall - deadline (s):")
    print(
        f"  p50 {percentile(overruns, 0.5):+.3f}  p95 {percentile(overruns, 0.95):+.3f}  "
        f"max {max(overruns):+.3f}  mean {statistics.fmean(overruns):+.3f}"
    )
    print(f"  within deadline + max(10%, 0.5 s): {sum(r['within'] for r in rows)}/{len(rows)}")
    for strategy in sorted({r["strategy"].split(":")[0] for r in rows}):
        sub = [r["overrun_s"] for r in rows if r["strategy"].split(":")[0] == strategy]
        print(f"  {strategy:<20} n={len(sub):>2}  max {max(sub):+.3f}")


if __name__ == "__main__":
    main()
