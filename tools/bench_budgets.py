"""Plans under tight, medium and generous budgets, and what each really used.

For every ``MEMORY_MB:DEADLINE_S`` budget, one fresh process builds a :class:`edgetts.Solver`,
asks the scheduler for its plan and answers the same questions under it, then reports its own
peak resident memory (``VmHWM``), so each budget's peak is its own, model load included (the
memory model predicts the whole process's peak). Per budget the table
shows the plan, predicted against measured peak memory, and the slowest solve against the
deadline (model load excluded, as the deadline is: ``Solver.prepare`` loads first).

    EDGETTS_THREADS=1 python tools/bench_budgets.py --data ../shared/data/gsm8k_test.jsonl \\
        --limit 3 --budgets 750:10 1000:30 2000:90
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import json, sys, time
from dataclasses import asdict
from edgetts.solver import SolveOptions, Solver
memory_mb, deadline_s, questions = json.loads(sys.argv[1])
solver = Solver()
runs = []
for question in questions:
    options = SolveOptions(memory_mb=memory_mb, deadline_s=deadline_s)
    plan = solver.prepare(question, options)  # the deadline excludes model load, so load first
    start = time.perf_counter()
    result = solver.solve(question, options)
    runs.append({"seconds": time.perf_counter() - start, "answer": result.answer,
                 "strategy": result.strategy, "cut_short": result.cut_short,
                 "tokens_generated": result.counters.get("tokens_generated", 0),
                 "tokens_redecoded": result.counters.get("tokens_redecoded", 0)})
hwm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"plan": plan.explain().splitlines()[0].removeprefix("plan: "),
                  "predicted_mb": plan.predicted_memory_mb, "predicted_s": plan.predicted_s,
                  "peak_mb": hwm_kb / 1024, "runs": runs}))
"""


def run_budget(memory_mb: float, deadline_s: float, questions: list[str]) -> dict:
    """Solve ``questions`` in a fresh process under one budget; its result and peak RSS."""
    start = time.perf_counter()
    child = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps([memory_mb, deadline_s, questions])],
        capture_output=True,
        text=True,
    )
    if child.returncode:
        why = child.stderr.strip()[-2000:]
        raise SystemExit(f"budget {memory_mb:g} MB / {deadline_s:g} s failed:\n{why}")
    row = json.loads(child.stdout.strip().splitlines()[-1])
    row.update(memory_mb=memory_mb, deadline_s=deadline_s, process_s=time.perf_counter() - start)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--budgets",
        nargs="+",
        default=["750:10", "1000:30", "2000:90"],
        help="MEMORY_MB:DEADLINE_S, one per budget",
    )
    ap.add_argument("--data", required=True, help="questions (any shape edgetts run reads)")
    ap.add_argument("--limit", type=int, default=3, help="questions per budget")
    ap.add_argument("--out", default=None, help="append the rows as JSON lines here")
    args = ap.parse_args()

    from edgetts.data import load_problems

    questions = [p.question for p in load_problems(args.data, limit=args.limit)]
    rows = []
    for budget in args.budgets:
        memory_mb, deadline_s = (float(x) for x in budget.split(":"))
        rows.append(run_budget(memory_mb, deadline_s, questions))
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(rows[-1]) + "\n")
    print(f"{len(questions)} questions per budget; peak = the whole process (model load included)")
    print(
        f"{'budget MB':>9} {'pred MB':>8} {'peak MB':>8} {'peak/bud':>8} {'deadline':>8} "
        f"{'pred s':>7} {'max s':>6} {'cut':>4}  plan"
    )
    for r in rows:
        slowest = max(x["seconds"] for x in r["runs"])
        cut = sum(x["cut_short"] for x in r["runs"])
        print(
            f"{r['memory_mb']:>9.0f} {r['predicted_mb']:>8.0f} {r['peak_mb']:>8.0f} "
            f"{r['peak_mb'] / r['memory_mb']:>8.0%} {r['deadline_s']:>7.0f}s {r['predicted_s']:>7.1f} "
            f"{slowest:>6.1f} {cut:>4}  {r['plan']}"
        )


if __name__ == "__main__":
    main()
