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

    EDGETTS_THREADS=1 python tools/bench_tree_throughput.py                 # N 16, 3 problems
    python tools/bench_tree_throughput.py --n 16 --repeats 5 --max-tokens 128
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path

from edgetts.policy import LlamaPolicy, PolicyConfig
from edgetts.prm import PRMScorer
from edgetts.search import run_search
from edgetts.search.base import Sampling, SearchConfig

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


def measure(policy: LlamaPolicy, scorer: PRMScorer, strategy: str, question: str, config: SearchConfig):
    """(decode tok/s, end-to-end tok/s, tokens decoded, rows per batch, PRM seconds, PRM calls)
    of one search."""
    result = run_search(strategy, question, policy, scorer, config)
    c = result.counters
    tokens = c["tokens_decoded"]
    rows = tokens / max(1, c["decode_calls"])
    return tokens / c["policy_s"], tokens / c["wall_s"], tokens, rows, c["prm_s"], c["prm_calls"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--beam-width", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="problems, one per repeat")
    parser.add_argument("--max-tokens", type=int, default=96, help="generated tokens per path")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()

    policy = LlamaPolicy(PolicyConfig(n_seq_max=args.n, max_tokens=args.max_tokens, seed=0))
    scorer = PRMScorer.load()
    base = SearchConfig(n=args.n, beam_width=args.beam_width, sampling=Sampling(max_tokens=args.max_tokens))
    runs: dict[str, list[tuple[float, ...]]] = {label: [] for label, _, _ in METHODS}
    for i, question in enumerate(questions(args.data, args.repeats)):
        for label, strategy, changes in METHODS:
            config = replace(base, sampling=replace(base.sampling, seed=i), **changes)
            runs[label].append(measure(policy, scorer, strategy, question, config))
            decode, wall, tokens, rows, prm_s, prm_calls = runs[label][-1]
            print(
                f"problem {i} {label:<18} {tokens:>5} tokens {decode:6.1f} tok/s decode {wall:6.1f} wall"
                f" {rows:5.1f} rows/batch PRM {prm_s:5.1f} s in {prm_calls:.0f} calls"
            )
    policy.close()

    medians = {
        label: [statistics.median(r[k] for r in rows) for k in range(6)] for label, rows in runs.items()
    }
    reference = medians["sampling"]
    print(
        f"\nN = {args.n}, M = {args.beam_width}, {args.max_tokens} tokens per path, medians of {args.repeats}"
    )
    print(
        f"{'method':<18} {'tokens':>7} {'decode tok/s':>13} {'ratio':>6} {'end-to-end':>11} {'ratio':>6}"
        f" {'rows/batch':>10} {'PRM s':>6}"
    )
    for label, (decode, wall, tokens, rows, prm_s, _) in medians.items():
        print(
            f"{label:<18} {tokens:>7.0f} {decode:>13.1f} {decode / reference[0]:>6.0%}"
            f" {wall:>11.1f} {wall / reference[1]:>6.0%} {rows:>10.1f} {prm_s:>6.1f}"
        )


if __name__ == "__main__":
    main()
