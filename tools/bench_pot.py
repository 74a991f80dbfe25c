"""Program-aided math against prose: programs vote, compared at equal generated tokens.

``run`` samples ``--n`` programs per problem from one prefill (the policy's PoT instruction),
runs each in the sandbox and keeps every program's printed answer, correctness and tokens (no
question text), so ``report`` computes the vote at any N' <= N from the first N' programs.
``report`` pairs those with prose rows of ``tools/bench_strategies.py`` on the same problems
(``docs/bench/gsm8k_test.jsonl``: greedy, majority and weighted best-of-N), with tokens per
problem beside each, and paired sign tests.

    python tools/bench_pot.py run --data ../shared/data/gsm8k_test.jsonl --limit 25 --n 16 \\
        --out runs/pot/gsm8k_test.jsonl
    python tools/bench_pot.py report --pot runs/pot/gsm8k_test.jsonl --prose docs/bench/gsm8k_test.jsonl

With ``--prose-samples data/labels/gsm8k_test.jsonl.gz`` (kept prose samples, one row of N per
problem) it adds cot+pot (``--mode cot+pot``): the first k prose samples and the first m programs
vote together, beside prose alone from those same kept samples.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import statistics
import sys
import time

import paired
from rows import open_rows

from edgetts.data import load_problems
from edgetts.grading import answers_equal
from edgetts.policy import LlamaPolicy, PolicyConfig
from edgetts.pot import PotConfig, program_of_thought
from edgetts.search.base import Candidate
from edgetts.search.select import pick_by_vote


def run(args: argparse.Namespace) -> None:
    from edgetts.sandbox import Sandbox

    problems = load_problems(args.data, limit=args.limit)
    settings = {key: getattr(args, key) for key in ("model", "n", "temperature", "seed", "max_tokens")}
    out = open_rows(args.out, settings)
    todo = [p for p in problems if str(p.id) not in out.done]
    if not todo:
        return
    policy = LlamaPolicy(
        PolicyConfig(
            model=args.model,
            n_seq_max=min(args.n, 16),
            max_tokens=args.max_tokens,
            n_threads=args.threads,
            temperature=args.temperature,
            seed=args.seed,
        )
    )
    sandbox = Sandbox()
    config = PotConfig(mode="pot", n_pot=args.n)
    for problem in todo:
        before = policy.counters.tokens_decoded - policy.counters.tokens_redecoded
        start = time.perf_counter()
        result = program_of_thought(problem.question, policy, sandbox, None, config)
        seconds = time.perf_counter() - start
        row = {
            "problem_id": str(problem.id),
            "model": policy.metadata.name,
            "gold": problem.answer,
            "n": args.n,
            "temperature": args.temperature,
            "tokens_generated": policy.counters.tokens_decoded - policy.counters.tokens_redecoded - before,
            "seconds": round(seconds, 3),
            "sandbox_s": result.counters["sandbox_s"],
            "sandbox_runs": result.counters["sandbox_runs"],
            "candidates": [
                {
                    "answer": c.answer,
                    "correct": answers_equal(c.answer, problem.answer),
                    "n_tokens": c.n_tokens,
                }
                for c in result.candidates
            ],
        }
        out.append(row)
        print(
            f"{problem.id}: vote {result.answer} (gold {problem.answer}), "
            f"{sum(c.answer is not None for c in result.candidates)}/{args.n} ran, {seconds:.0f}s",
            file=sys.stderr,
            flush=True,
        )
    policy.close()


def vote(row: dict, n: int) -> tuple[bool, int]:
    """Majority over the first ``n`` programs' answers (failed ones never vote); tokens spent."""
    return vote_over(row["candidates"][:n], row["gold"])


def vote_over(cands: list[dict], gold: str) -> tuple[bool, int]:
    """Majority over kept candidates (``answer``, ``n_tokens``; no answer never votes): whether
    it is right, and the tokens they cost."""
    tokens = sum(c["n_tokens"] for c in cands)
    as_cands = [Candidate("", c["answer"], None, [], c["n_tokens"], None) for c in cands]
    chosen, _ = pick_by_vote(as_cands, lambda c: 1.0)
    return bool(
        chosen is not None and chosen.answer is not None and answers_equal(chosen.answer, gold)
    ), tokens


def hybrid_configs(pot: dict[str, dict], samples: dict[str, dict], shared: list[str]) -> dict[str, dict]:
    """cot+pot: the first ``k`` kept prose samples and the first ``m`` programs of each problem vote
    together; beside them prose alone from the same kept samples (``label_steps.py sample`` rows,
    so the comparison is within one sampling run). name -> {problem: (right, tokens)}."""
    out: dict[str, dict] = {}
    for k, m in [(8, 0), (16, 0), (4, 4), (8, 8), (16, 16)]:
        name = f"kept prose majority N={k}" if not m else f"cot+pot majority {k}+{m}"
        out[name] = {
            i: vote_over(samples[i]["candidates"][:k] + pot[i]["candidates"][:m], pot[i]["gold"])
            for i in shared
        }
    return out


def _rows(path: str) -> list[dict]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def _is_negation(answer: str | None, gold: str) -> bool:
    """Whether a program printed minus the right number (a sign slip, e.g. a loss as negative)."""
    try:
        value, right = float(answer), float(gold)
    except (TypeError, ValueError):
        return False
    return right != 0 and math.isclose(value, -right, rel_tol=1e-9)


def report(args: argparse.Namespace) -> None:
    pot = {r["problem_id"]: r for r in _rows(args.pot)}
    prose: dict[tuple[str, int], dict[str, dict]] = {}
    for r in _rows(args.prose):
        if r.get("model", "").startswith("qwen2.5-coder-0.5b"):
            prose.setdefault((r["strategy"], r["n"]), {})[r["problem_id"]] = r
    shared = sorted(set(pot) & set(prose.get(("greedy", 1), {})), key=lambda k: int(k) if k.isdigit() else k)
    if not shared:
        sys.exit("Error: no problem in both files")
    n_max = min(pot[k]["n"] for k in shared)
    configs: dict[str, dict[str, bool]] = {}
    tokens: dict[str, float] = {}
    for n in sorted({1, 4, 8, n_max}):
        if n <= n_max:
            got = {k: vote(pot[k], n) for k in shared}
            configs[f"pot majority N={n}"] = {k: ok for k, (ok, _) in got.items()}
            tokens[f"pot majority N={n}"] = statistics.mean(t for _, t in got.values())
    for strategy, n in [
        ("greedy", 1),
        ("majority", 4),
        ("weighted_best_of_n", 4),
        ("majority", 16),
        ("weighted_best_of_n", 16),
    ]:
        rows = prose.get((strategy, n), {})
        if all(k in rows for k in shared):
            name = f"prose {strategy} N={n}"
            configs[name] = {k: bool(rows[k]["correct"]) for k in shared}
            tokens[name] = statistics.mean(rows[k]["tokens_generated"] for k in shared)
    if args.prose_samples:
        kept = {r["id"]: r for r in _rows(args.prose_samples)}
        missing = [k for k in shared if k not in kept]
        if missing:
            sys.exit(f"Error: {args.prose_samples} has no kept samples of problems {', '.join(missing[:5])}")
        for name, got in hybrid_configs(pot, kept, shared).items():
            configs[name] = {k: ok for k, (ok, _) in got.items()}
            tokens[name] = statistics.mean(t for _, t in got.values())
    print(f"{len(shared)} problems ({shared[0]} .. {shared[-1]})\n")
    print(f"{'configuration':34s} {'accuracy':>12s} {'tokens/problem':>15s}")
    for name, res in configs.items():
        print(
            f"{name:34s} {sum(res.values()):4d} = {sum(res.values()) / len(shared):5.1%} {tokens[name]:15.0f}"
        )
    ran = [c["answer"] is not None for k in shared for c in pot[k]["candidates"]]
    ms = [1000 * pot[k]["sandbox_s"] / max(pot[k]["sandbox_runs"], 1) for k in shared]
    print(f"\nprograms that ran and printed a number: {sum(ran)}/{len(ran)} = {sum(ran) / len(ran):.1%}")
    print(
        f"sandbox: {statistics.mean(ms):.0f} ms per program run; "
        f"{statistics.mean(pot[k]['sandbox_s'] / pot[k]['seconds'] for k in shared):.1%} of wall time"
    )
    wrong = [c for k in shared for c in pot[k]["candidates"] if c["answer"] is not None and not c["correct"]]
    negated = sum(_is_negation(c["answer"], pot[k]["gold"]) for k in shared for c in pot[k]["candidates"])
    print(
        f"programs that printed a wrong number: {len(wrong)}; of them the gold answer's negation: "
        f"{negated} ({negated / max(len(wrong), 1):.0%})"
    )
    print("\npaired sign tests (A wins / B wins, two-sided p):")
    top = f"pot majority N={n_max}"
    headline = [
        (top, "prose weighted_best_of_n N=16"),
        (top, "prose majority N=16"),
        ("cot+pot majority 8+8", "prose weighted_best_of_n N=16"),
    ]
    for a, b in args.pairs or headline:
        if a in configs and b in configs:
            p = paired.compare(configs[a], configs[b])
            print(f"  {a} vs {b}: {p.wins} / {p.losses}, p = {p.p_value:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--data", required=True)
    r.add_argument("--limit", type=int, default=25)
    r.add_argument("--n", type=int, default=16)
    r.add_argument("--temperature", type=float, default=0.3)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--max-tokens", type=int, default=400)
    r.add_argument("-m", "--model", default=None)
    r.add_argument("--threads", type=int, default=int(os.environ.get("EDGETTS_THREADS", "1")))
    r.add_argument("--out", required=True)
    p = sub.add_parser("report")
    p.add_argument("--pot", required=True)
    p.add_argument("--prose", required=True)
    p.add_argument(
        "--prose-samples",
        default=None,
        help="kept prose samples (data/labels/gsm8k_test.jsonl.gz): adds cot+pot and prose alone from them",
    )
    p.add_argument("--pair", dest="pairs", nargs=2, action="append", metavar=("A", "B"))
    args = ap.parse_args()
    {"run": run, "report": report}[args.cmd](args)


if __name__ == "__main__":
    main()
