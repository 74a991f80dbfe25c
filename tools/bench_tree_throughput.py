"""What the round barrier costs tree searches: decode tokens/s of DVTS and beam search against
sampling's, at the same N, side by side in one run (issue #21, "no round barrier").

Four searches per problem, alternated so that a slow spell of the machine hits them alike:
sampling (``majority``), DVTS in lock-step rounds (``SearchConfig.dvts_rounds``, the
default), DVTS without a barrier (each subtree grows as soon as its own children are scored),
and beam search (which keeps its rounds). Each repeat takes the next GSM8K test problem.

Decode tokens/s is tokens decoded over the seconds the search spent in the policy (its PRM calls
left out: they cost the same however the decoding is scheduled); end to end it is over the
search's wall time. Rows per batch (tokens decoded over the batches decoded) shows how full the
batch was, whatever else the machine was doing; PRM seconds and calls what scoring cost. Prints
the medians over the repeats and each one's ratio to sampling.

With ``--concurrent K`` each method solves K problems at once (threads, each search in a session
of its own on the one policy, as ``edgetts run --concurrent K`` and the server do): their rows
share every batch, so a tree search's idle rows in one problem's round carry another problem's.
Decode seconds then overlap between searches, so the table gives end-to-end tok/s over the
group's wall time (all K searches' tokens) and rows per batch over the policy's own batches.

The PRM is the policy's own probe (what edgetts picks for it), as a user runs it.

    EDGETTS_THREADS=1 python tools/bench_tree_throughput.py                 # N 16, 3 problems
    python tools/bench_tree_throughput.py --n 16 --repeats 5 --max-tokens 128
    python tools/bench_tree_throughput.py --concurrent 2                    # 2 problems at a time
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path

from edgetts.policy import LlamaPolicy, PolicyConfig
from edgetts.probe import load_scorer, policy_prm_dir
from edgetts.search import run_search
from edgetts.search.base import Sampling, SearchConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_strategies import kept_layers  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k_test.jsonl"
# (label, strategy, SearchConfig changes): the rows of the table, in the order they run.
METHODS = (
    ("sampling", "majority", {}),
    ("dvts rounds (default)", "dvts", {"dvts_rounds": True}),
    ("dvts apart", "dvts", {"dvts_rounds": False}),
    ("beam search", "beam_search", {}),
)


def questions(path: Path, count: int) -> list[str]:
    """The first ``count`` questions of a GSM8K JSONL file."""
    with path.open() as lines:
        return [json.loads(line)["question"] for _, line in zip(range(count), lines, strict=False)]


def solve(policy: LlamaPolicy, scorer, strategy: str, question: str, config: SearchConfig):
    """One search in a session of its own (its counters apart from any concurrent search's)."""
    with policy.session() as session:
        return run_search(strategy, question, session, scorer.with_own_counters(), config)


def measure(policy: LlamaPolicy, scorer, strategy: str, group: list[str], configs: list[SearchConfig]):
    """The searches of ``group`` run at once (one thread each): (decode tok/s, end-to-end
    tok/s, tokens, rows per batch, PRM seconds, PRM calls). Decode tok/s is over the search's
    own policy seconds (PRM left out), so only for a group of one (NaN otherwise)."""
    calls, start = policy.counters.decode_calls, time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(group)) as pool:
        results = list(pool.map(partial(solve, policy, scorer, strategy), group, configs))
    wall = time.perf_counter() - start
    tokens = sum(r.counters["tokens_decoded"] for r in results)
    decode = tokens / results[0].counters["policy_s"] if len(results) == 1 else float("nan")
    rows = tokens / max(1, policy.counters.decode_calls - calls)
    prm_s = sum(r.counters["prm_s"] for r in results)
    return decode, tokens / wall, tokens, rows, prm_s, sum(r.counters["prm_calls"] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--beam-width", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="groups of problems, one per repeat")
    parser.add_argument("--concurrent", type=int, default=1, help="problems solved at once")
    parser.add_argument("--max-tokens", type=int, default=96, help="generated tokens per path")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()

    k = args.concurrent
    scorer = load_scorer(policy_prm_dir(None), threads=1)
    policy = LlamaPolicy(
        PolicyConfig(
            n_seq_max=args.n * k,
            max_searches=k,
            max_tokens=args.max_tokens,
            seed=0,
            capture_states=True,
            state_layers=kept_layers(scorer),
        )
    )
    base = SearchConfig(n=args.n, beam_width=args.beam_width, sampling=Sampling(max_tokens=args.max_tokens))
    runs: dict[str, list[tuple[float, ...]]] = {label: [] for label, _, _ in METHODS}
    qs = questions(args.data, args.repeats * k)
    for i in range(args.repeats):
        group = qs[i * k : (i + 1) * k]
        for label, strategy, changes in METHODS:
            configs = [
                replace(base, sampling=replace(base.sampling, seed=i * k + j), **changes) for j in range(k)
            ]
            runs[label].append(measure(policy, scorer, strategy, group, configs))
            decode, wall, tokens, rows, prm_s, prm_calls = runs[label][-1]
            print(
                f"group {i} {label:<22} {tokens:>6} tokens {decode:6.1f} tok/s decode {wall:6.1f} "
                f"end-to-end {rows:5.1f} rows/batch PRM {prm_s:5.1f} s in {prm_calls:.0f} calls",
                flush=True,
            )
    policy.close()

    medians = {
        label: [statistics.median(r[c] for r in rows) for c in range(6)] for label, rows in runs.items()
    }
    reference = medians["sampling"]
    print(
        f"\nN = {args.n}, M = {args.beam_width}, {args.max_tokens} tokens per path, {k} problem(s) at once, "
        f"medians of {args.repeats}"
    )
    print(
        f"{'method':<22} {'tokens':>7} {'decode tok/s':>13} {'ratio':>6} {'end-to-end':>11} {'ratio':>6}"
        f" {'rows/batch':>10} {'PRM s':>6}"
    )
    for label, (decode, wall, tokens, rows, prm_s, _) in medians.items():
        print(
            f"{label:<22} {tokens:>7.0f} {decode:>13.1f} {decode / reference[0]:>6.0%}"
            f" {wall:>11.1f} {wall / reference[1]:>6.0%} {rows:>10.1f} {prm_s:>6.1f}"
        )


if __name__ == "__main__":
    main()
