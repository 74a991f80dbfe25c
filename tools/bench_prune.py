"""Wall time of weighted best-of-N with all N samples, with adaptive sampling, and with pruning.

Tokens saved (``tools/bench_adaptive.py``) are not time saved: a wave lasts as long as its
longest sample, and a batch of fewer rows decodes fewer tokens per second. This runs the three
settings on the same problems in one process, one problem at a time and the settings in turn
for each problem (so the machine's drift falls on all three alike), and prints per setting the
problems right, the tokens generated, the seconds, the samples drawn and pruned, and the median
over problems of its time and its tokens as a share of all N's::

    python tools/bench_prune.py --data ../shared/data/gsm8k_test.jsonl --limit 5 -n 16

Each setting's samples are seeded alike, so adaptive sampling draws the first samples of the
full run and pruning cuts some of them short (up to the float differences that the batch's rows
cause in llama.cpp).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgetts.data import load_problems  # noqa: E402
from edgetts.grading import answers_equal  # noqa: E402
from edgetts.solver import SolveOptions, Solver  # noqa: E402


@dataclass(frozen=True)
class Setting:
    name: str
    adaptive: bool
    prune: bool


SETTINGS = (
    Setting("all N", adaptive=False, prune=False),
    Setting("adaptive", adaptive=True, prune=False),
    Setting("adaptive + pruning", adaptive=True, prune=True),
)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="benchmark JSONL (question and answer fields)")
    ap.add_argument("--limit", type=int, default=5, help="the first LIMIT problems")
    ap.add_argument("-n", type=int, default=16, help="samples at most")
    ap.add_argument("--max-tokens", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    problems = load_problems(args.data, limit=args.limit)
    rows: dict[str, list[dict]] = {s.name: [] for s in SETTINGS}
    with Solver() as solver:
        for i, problem in enumerate(problems):
            for s in SETTINGS:
                options = SolveOptions(
                    strategy="weighted_best_of_n",
                    n=args.n,
                    max_tokens=args.max_tokens,
                    seed=args.seed,
                    adaptive=s.adaptive,
                    prune=s.prune,
                )
                result = solver.solve(problem.question, options)
                rows[s.name].append(
                    {
                        "right": answers_equal(result.answer, problem.answer),
                        "tokens": result.counters["tokens_generated"],
                        "seconds": result.counters["wall_s"],
                        "samples": len(result.candidates),
                        "pruned": sum(c.stop_reason == "pruned" for c in result.candidates),
                    }
                )
                print(f"# problem {i}: {s.name}: {rows[s.name][-1]}", file=sys.stderr, flush=True)
    base = rows[SETTINGS[0].name]
    print(f"# weighted best-of-N, N = {args.n} at most, {len(problems)} problems of {args.data}")
    print("| setting | right | tokens | seconds | samples | pruned | time / all N | tokens / all N |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for s in SETTINGS:
        r = rows[s.name]
        time_share = statistics.median(a["seconds"] / b["seconds"] for a, b in zip(r, base, strict=True))
        token_share = statistics.median(a["tokens"] / b["tokens"] for a, b in zip(r, base, strict=True))
        print(
            f"| {s.name} | {sum(x['right'] for x in r)} | {sum(x['tokens'] for x in r)} "
            f"| {sum(x['seconds'] for x in r):.0f} | {sum(x['samples'] for x in r)} "
            f"| {sum(x['pruned'] for x in r)} | {time_share:.2f} | {token_share:.2f} |"
        )


if __name__ == "__main__":
    main()
