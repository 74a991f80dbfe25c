"""Wall time of weighted best-of-N with all N samples, with adaptive sampling, and with pruning.

Tokens saved (``tools/bench_adaptive.py``) are not time saved: a wave lasts as long as its
longest sample, and a batch of fewer rows decodes fewer tokens per second. This runs the settings
on the same problems in one process, one problem at a time and the settings in turn for each
problem (so the machine's drift falls on all of them alike), and prints per setting the problems
right (with the paired sign test against all N), the tokens generated, the seconds, the samples
drawn and pruned, and the median over problems of its time and its tokens as a share of all N's::

    python tools/bench_prune.py --data ../shared/data/gsm8k_test.jsonl --limit 5 -n 16
    # the live check of the defaults against all N, resumable (rows appended to --out; a rerun
    # skips what is there and prints the table over all of them)
    python tools/bench_prune.py --data ../shared/data/gsm8k_test.jsonl --limit 50 -n 16 \\
        --settings all prune --out runs/prune_live_gsm8k_test.jsonl

Each setting's samples are seeded alike, so adaptive sampling draws the first samples of the
full run and pruning cuts some of them short (up to the float differences that the batch's rows
cause in llama.cpp). Rows (an :class:`edgetts.results.ResultsFile`, so a rerun with other settings
is refused) hold no question text: the problem's index and id, the answer given and the gold one,
and the counts above.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from paired import compare  # noqa: E402
from rows import open_rows  # noqa: E402

from edgetts.data import load_problems  # noqa: E402
from edgetts.grading import answers_equal  # noqa: E402
from edgetts.solver import SolveOptions, Solver  # noqa: E402


@dataclass(frozen=True)
class Setting:
    key: str  # as --settings names it
    name: str
    adaptive: bool
    prune: bool


SETTINGS = (
    Setting("all", "all N", adaptive=False, prune=False),
    Setting("adaptive", "adaptive", adaptive=True, prune=False),
    Setting("prune", "adaptive + pruning", adaptive=True, prune=True),
)
BASELINE = SETTINGS[0]  # the one every other is compared with


def row_id(index: int, setting: Setting) -> str:
    """A row's key in the results file: the problem's index and the setting."""
    return f"{index}/{setting.key}"


def table(rows: list[dict], settings: tuple[Setting, ...]) -> list[str]:
    """The markdown table over the problems that have a row for every setting in ``settings``."""
    by_setting = {s.key: {r["index"]: r for r in rows if r["setting"] == s.key} for s in settings}
    problems = sorted(set.intersection(*(set(v) for v in by_setting.values())))
    base = by_setting[settings[0].key]
    right_base = {str(i): base[i]["right"] for i in problems}
    lines = [
        f"# weighted best-of-N, {len(problems)} problems, every setting against {settings[0].name}",
        f"| setting | right | won/lost (p) | tokens | seconds | samples | pruned "
        f"| time / {settings[0].name} (median) | tokens / {settings[0].name} (median) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in settings:
        r = [by_setting[s.key][i] for i in problems]
        paired = compare({str(i): by_setting[s.key][i]["right"] for i in problems}, right_base)
        sign = f"{paired.wins}/{paired.losses} ({paired.p_value:.2f})" if s != settings[0] else ""
        time_share = statistics.median(
            a["seconds"] / base[i]["seconds"] for a, i in zip(r, problems, strict=True)
        )
        token_share = statistics.median(
            a["tokens"] / base[i]["tokens"] for a, i in zip(r, problems, strict=True)
        )
        lines.append(
            f"| {s.name} | {sum(x['right'] for x in r)} | {sign} | {sum(x['tokens'] for x in r)} "
            f"| {sum(x['seconds'] for x in r):.0f} | {sum(x['samples'] for x in r)} "
            f"| {sum(x['pruned'] for x in r)} | {time_share:.2f} | {token_share:.2f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="benchmark JSONL (question and answer fields)")
    ap.add_argument("--limit", type=int, default=5, help="the first LIMIT problems")
    ap.add_argument("-n", type=int, default=16, help="samples at most")
    ap.add_argument("--max-tokens", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--settings",
        nargs="+",
        choices=[s.key for s in SETTINGS],
        default=[s.key for s in SETTINGS],
        help=f"which to run ({BASELINE.key!r}, the baseline, is always among them)",
    )
    ap.add_argument("--out", type=Path, help="append rows here and skip those already there (resume)")
    args = ap.parse_args(argv)
    settings = tuple(s for s in SETTINGS if s.key in args.settings or s == BASELINE)
    problems = load_problems(args.data, limit=args.limit)
    run = {"data": args.data.name, "n": args.n, "seed": args.seed, "max_tokens": args.max_tokens}
    # a run's rows resume only under its own settings
    out = open_rows(args.out, run, id_field="id") if args.out is not None else None
    rows = list(out.records) if out is not None else []
    done = out.done if out is not None else set()
    todo = [(i, s) for i in range(len(problems)) for s in settings if row_id(i, s) not in done]
    if todo:
        with Solver() as solver:
            for i, s in todo:
                problem = problems[i]
                options = SolveOptions(
                    strategy="weighted_best_of_n",
                    n=args.n,
                    max_tokens=args.max_tokens,
                    seed=args.seed,
                    adaptive=s.adaptive,
                    prune=s.prune,
                )
                result = solver.solve(problem.question, options)
                row = {
                    "id": row_id(i, s),
                    "index": i,
                    "problem_id": problem.id,
                    "setting": s.key,
                    "answer": result.answer,
                    "gold": problem.answer,
                    "right": answers_equal(result.answer, problem.answer),
                    "tokens": result.counters["tokens_generated"],
                    "seconds": round(result.counters["wall_s"], 2),
                    "samples": len(result.candidates),
                    "pruned": sum(c.stop_reason == "pruned" for c in result.candidates),
                }
                if out is not None:
                    out.append(row)  # a row at a time: a stopped run keeps its rows
                rows.append(row)
                print(f"# problem {i}: {s.name}: {row}", file=sys.stderr, flush=True)
    print(f"# {args.data}, N = {args.n} at most, seed {args.seed}, max tokens {args.max_tokens}")
    print("\n".join(table([r for r in rows if r["index"] < len(problems)], settings)))


if __name__ == "__main__":
    main()
