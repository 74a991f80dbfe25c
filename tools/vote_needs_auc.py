"""What pair AUC would a verifier need for the weighted vote to reach a given accuracy?

Issue 19 asks both for a pair AUC (75 on GSM8K test, 80 on MAWPS) and for a weighted vote at
N = 16 (45 %, 93 %). This tool ties the two together on the committed N = 16 sample sets: it keeps
each problem's samples, their answers, answer groups and written-arithmetic flags as they are,
and replaces only the verifier's scores by draws from a binormal model of a given AUC (a right
sample's score ~ N(d, 1), a wrong one's ~ N(0, 1), d = sqrt(2) * Phi^-1(AUC), passed through a
logistic onto (0, 1)). The vote is the shipped one: score-weighted over the answer groups, with
samples whose arithmetic is wrong voting only when no other sample has an answer. The table is
the mean accuracy over ``--draws`` draws per AUC, beside majority (the same vote, weight 1, a
tie between the largest groups counted as a fair draw among them).

The model is a simplification (one score distribution for every problem, samples independent),
so read it as the order of magnitude a verifier needs, not as a prediction::

    python tools/vote_needs_auc.py data/labels/gsm8k_test.jsonl.gz data/labels/mawps.jsonl.gz
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
from pathlib import Path
from statistics import NormalDist

from edgetts.arithmetic import has_wrong_arithmetic
from edgetts.grading import answers_equal


def answer_groups(candidates: list[dict]) -> list[list[int]]:
    """Indices of the voting samples grouped by equal answer (slips vote only if none else can)."""
    real = [i for i, c in enumerate(candidates) if c["answer"] is not None]
    voting = [i for i in real if not has_wrong_arithmetic(candidates[i]["text"])] or real
    groups: list[list[int]] = []
    for i in voting:
        answer = candidates[i]["answer"]
        group = next((g for g in groups if answers_equal(candidates[g[0]]["answer"], answer)), None)
        if group is None:
            groups.append([i])
        else:
            group.append(i)
    return groups


def accuracy(problems: list[tuple[list[bool], list[list[int]]]], auc: float | None, draws: int) -> float:
    """Mean share of problems whose weighted vote is right, scores drawn at ``auc`` (None: majority)."""
    if auc is None:  # majority, a tie for the most votes a fair draw
        right = 0.0
        for correct, groups in problems:
            if groups:
                top = [g for g in groups if len(g) == max(map(len, groups))]
                right += sum(correct[g[0]] for g in top) / len(top)
        return 100 * right / len(problems)
    shift = math.sqrt(2) * NormalDist().inv_cdf(auc)
    rng = random.Random(0)
    right = 0
    for _ in range(draws):
        for correct, groups in problems:
            if not groups:
                continue
            scores = [1 / (1 + math.exp(shift / 2 - rng.gauss(shift if ok else 0.0, 1.0))) for ok in correct]
            best = max(groups, key=lambda g: sum(scores[i] for i in g))
            right += correct[best[0]]
    return 100 * right / (draws * len(problems))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sets", nargs="+", help="committed sample rows (data/labels/*.jsonl.gz)")
    ap.add_argument("--auc", type=float, nargs="+", default=[0.64, 0.71, 0.75, 0.80, 0.85, 0.90, 0.95])
    ap.add_argument("--draws", type=int, default=200)
    args = ap.parse_args()
    if not all(0 < a < 1 for a in args.auc):
        ap.error("every --auc must be between 0 and 1 (1 would need scores infinitely apart)")
    columns = " ".join(f"{f'AUC {a:.2f}':>9}" for a in args.auc)
    print(f"{'set':<14} {'problems':>8} {'majority':>9} {columns}")
    for path in args.sets:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        problems = [([c["correct"] for c in r["candidates"]], answer_groups(r["candidates"])) for r in rows]
        cells = [accuracy(problems, auc, args.draws) for auc in args.auc]
        name = Path(path).name.removesuffix(".jsonl.gz")
        print(
            f"{name:<14} {len(problems):>8} {accuracy(problems, None, 0):>8.1f}% "
            + " ".join(f"{c:>8.1f}%" for c in cells)
        )


if __name__ == "__main__":
    main()
