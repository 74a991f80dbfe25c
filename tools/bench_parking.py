"""Parking in host memory against re-decoding: N = 64 tree searches with 16 KV slots (issue 21).

Each mode runs in its own process, so that its peak resident memory (VmHWM) is its own: ``off``
is today's behaviour before parking (``park_mb=0``: parked paths are rebuilt by decoding their
tokens again), ``on`` parks them in host memory with the budget the scheduler plans for these
settings (:func:`edgetts.scheduler.park_mb`), as a Solver under a plan would configure it. Same
problems, strategies and seed in both; the table sums every search of a mode:

    python tools/bench_parking.py --data ../shared/data/mawps.jsonl --limit 5 --n 64 \\
        --n-seq-max 16 --strategies beam_search dvts --out runs/parking.json

A long sweep can go a problem at a time (``--offset K --limit 1 --out runs/parking/K.json``) and
the parts be put together afterwards: ``python tools/bench_parking.py --report runs/parking/*.json``
(CPU seconds add up; peak RSS is the largest part's).

Columns: tokens decoded after the prompts (the trees' tokens plus re-decoded ones), tokens
re-decoded, tokens restored from host memory, MB copied to host, the most held at once, wall time
of the searches (the median over ``--repeat`` runs; model loading excluded), CPU seconds of the
process, and peak RSS against the scheduler's estimate for the same settings (with its park
budget in ``on``). Answers are compared between the modes problem by problem.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from edgetts.data import load_problems
from edgetts.grading import answers_equal
from edgetts.metadata import read_metadata
from edgetts.models import resolve
from edgetts.policy import LlamaPolicy, PolicyConfig, default_threads
from edgetts.probe import default_prm_dir, load_scorer
from edgetts.scheduler import MB, estimate_for_policy, park_mb, peak_rss_mb, prm_cost
from edgetts.search import run_search
from edgetts.search.base import Sampling, SearchConfig

MODES = ("off", "on")


def worker(args: argparse.Namespace) -> dict:
    """Run every (problem, strategy) search in one mode; return the rows and the process's costs."""
    meta = read_metadata(resolve(args.model))
    prm = args.prm or default_prm_dir(meta.name, meta.n_embd)
    scorer = load_scorer(prm, threads=default_threads())
    planned_park = park_mb(meta, args.n, args.n_seq_max, args.max_tokens, args.kv_type)
    policy_park = planned_park if args.mode == "on" else 0.0
    config = PolicyConfig(
        model=args.model,
        n_seq_max=args.n_seq_max,
        max_tokens=args.max_tokens,
        kv_type=args.kv_type,
        seed=args.seed,
        park_mb=policy_park,
        capture_states=scorer.needs_states,
        state_layers=scorer.state_layers,
        capture_confidence=scorer.needs_confidence,
    )
    policy = LlamaPolicy(config)
    cost = prm_cost(prm)
    # The parking budget counted in full: the plan's bound, which this run may fill.
    estimate = estimate_for_policy(config, meta, cost.memory_mb if cost else None, policy_park)
    problems = load_problems(args.data, limit=args.offset + args.limit)[args.offset :]
    rows = []
    cpu_start = resource.getrusage(resource.RUSAGE_SELF)
    for problem in problems:
        for strategy in args.strategies:
            walls, answers, counters = [], [], {}
            for _ in range(args.repeat):
                search = SearchConfig(
                    n=args.n,
                    beam_width=args.beam_width,
                    agg=scorer.default_aggregation,
                    sampling=Sampling(seed=args.seed),
                )
                start = time.perf_counter()
                result = run_search(strategy, problem.question, policy, scorer, search)
                walls.append(time.perf_counter() - start)
                answers.append(result.answer)
                counters = result.counters  # the same every repeat (same seed), but for time
            rows.append(
                {
                    "problem_id": problem.id,
                    "strategy": strategy,
                    "answer": answers[0],
                    "answers_agree_across_repeats": len(set(answers)) == 1,
                    "correct": answers_equal(answers[0], problem.answer),
                    "wall_s": statistics.median(walls),
                    **{
                        k: counters.get(k, 0)
                        for k in ("tokens_decoded", "tokens_redecoded", "tokens_restored", "bytes_parked")
                    },
                }
            )
            print(f"[{args.mode}] {problem.id} {strategy}: {rows[-1]}", file=sys.stderr, flush=True)
    cpu_end = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (cpu_end.ru_utime - cpu_start.ru_utime) + (cpu_end.ru_stime - cpu_start.ru_stime)
    return {
        "mode": args.mode,
        "park_mb": policy_park,
        "rows": rows,
        "cpu_s": round(cpu_s, 1),
        "peak_parked_mb": policy.parking.peak / MB,
        "peak_rss_mb": peak_rss_mb(),
        "estimate_mb": estimate.total_mb,
        "estimate": estimate.describe(),
        "threads": config.n_threads or default_threads(),
    }


def merge(parts: list[dict[str, dict]]) -> dict[str, dict]:
    """Several runs' results as one: rows and CPU seconds add up, peaks are the largest."""
    merged = {}
    for mode in MODES:
        runs = [part[mode] for part in parts]
        merged[mode] = {
            **runs[0],
            "rows": [row for run in runs for row in run["rows"]],
            "cpu_s": round(sum(run["cpu_s"] for run in runs), 1),
            "peak_parked_mb": max(run["peak_parked_mb"] for run in runs),
            "peak_rss_mb": max(run["peak_rss_mb"] for run in runs),
        }
    return merged


def table(results: dict[str, dict]) -> str:
    """The modes side by side, summed over every search, and whether their answers agree."""
    head = (
        f"{'mode':<5} {'park MB':>7} {'decoded':>8} {'re-decoded':>16} {'restored':>9} {'to host MB':>10} "
        f"{'held MB':>8} {'wall s':>8} {'CPU s':>7} {'peak RSS':>9} {'estimate':>9} {'RSS/est':>8}"
    )
    lines = [head]
    for mode in MODES:
        r = results[mode]
        rows = r["rows"]
        decoded = sum(x["tokens_decoded"] for x in rows)
        redecoded = sum(x["tokens_redecoded"] for x in rows)
        share = f"{redecoded} ({100 * redecoded / decoded:.0f} %)" if decoded else "0"
        lines.append(
            f"{mode:<5} {r['park_mb']:>7.0f} {decoded:>8} {share:>16} "
            f"{sum(x['tokens_restored'] for x in rows):>9} "
            f"{sum(x['bytes_parked'] for x in rows) / MB:>10.0f} {r['peak_parked_mb']:>8.1f} "
            f"{sum(x['wall_s'] for x in rows):>8.1f} {r['cpu_s']:>7.0f} {r['peak_rss_mb']:>9.0f} "
            f"{r['estimate_mb']:>9.0f} {r['peak_rss_mb'] / r['estimate_mb']:>8.2f}"
        )
    lines.append("")
    lines.append(f"{'problem':<8} {'strategy':<12} {'wall off':>9} {'wall on':>8} answer (off / on)")
    for off, on in zip(results["off"]["rows"], results["on"]["rows"], strict=True):
        same = "same" if off["answer"] == on["answer"] else "DIFFERENT"
        lines.append(
            f"{off['problem_id']:<8} {off['strategy']:<12} {off['wall_s']:>9.1f} {on['wall_s']:>8.1f} "
            f"{off['answer']} / {on['answer']} ({same})"
        )
    for mode in MODES:
        lines.append(f"estimate ({mode}): {results[mode]['estimate']}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/mawps.jsonl")
    p.add_argument("--limit", type=int, default=5, help="how many problems of --data")
    p.add_argument("--offset", type=int, default=0, help="skip this many problems of --data first")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--n-seq-max", type=int, default=16)
    p.add_argument("--beam-width", type=int, default=SearchConfig.beam_width)
    p.add_argument("--strategies", nargs="+", default=["beam_search", "dvts"])
    p.add_argument("--max-tokens", type=int, default=400, help="as tools/bench_strategies.py runs")
    p.add_argument("--kv-type", default="f16")
    p.add_argument("--model", default=None)
    p.add_argument("--prm", default=None, help="PRM directory (default: the one edgetts picks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=1, help="runs per search; wall time is their median")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument(
        "--parallel",
        action="store_true",
        help="run the modes at the same time (on a shared machine both then see the same load; "
        "each still has its own process and peak RSS)",
    )
    p.add_argument("--out", default=None, help="also write both modes' results here (JSON)")
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # a worker process
    p.add_argument("--report", nargs="+", metavar="JSON", help="print the table of these --out files, merged")
    args = p.parse_args()
    if args.report:
        print(table(merge([json.loads(Path(f).read_text()) for f in args.report])))
        return
    if args.mode:
        print(json.dumps(worker(args)))
        return
    results = {}
    workers = {}
    for mode in args.modes:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--mode", mode]
        workers[mode] = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        if not args.parallel:
            workers[mode].wait()
    for mode, proc in workers.items():
        stdout, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"the {mode} run failed (exit code {proc.returncode})")
        results[mode] = json.loads(stdout.strip().splitlines()[-1])
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    if set(results) == set(MODES):
        print(table(results))
    else:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
