"""Compare sampling settings on the same problems from ``edgetts run`` results files.

Run the policy once per setting on training problems (not the test set), then summarise::

    for s in "0.3 1.0" "0.5 1.0" "0.8 1.0"; do set -- $s     # the README's table
      edgetts run --data ../shared/data/gsm8k_train.jsonl --limit 14 --strategy majority -n 8 \\
          --temperature $1 --top-p $2 --seed 1 --no-adaptive --out runs/study/t$1_p$2.jsonl
    done
    python tools/sampling_study.py runs/study/*.jsonl

Per file, over the problems every file has: the accuracy of a single sample, majority voting over
the first k samples (k = 1, 2, 4, ... up to N), the oracle (any sample right), the mean number of
distinct answers and the mean generated tokens per sample. A good setting for search raises the
single-sample accuracy without collapsing the oracle: search can only pick what was sampled.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from edgetts.search.base import Candidate
from edgetts.search.select import pick_by_vote


def load(path: str) -> dict[str, dict]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return {str(r["id"]): r for r in rows if r.get("candidates")}


def majority_correct(row: dict, k: int) -> bool:
    """Whether majority voting over the first ``k`` samples picks a right one (as graded by run)."""
    first = row["candidates"][:k]
    cands = [Candidate.from_dict(c) for c in first]
    chosen, _ = pick_by_vote(cands, lambda c: 1.0)
    return chosen is not None and bool(first[cands.index(chosen)].get("correct"))


def summarise(rows: list[dict]) -> dict[str, float]:
    n = min(len(r["candidates"]) for r in rows)
    out = {"sample": statistics.fmean(c["correct"] for r in rows for c in r["candidates"][:n])}
    k = 1
    while k <= n:
        out[f"maj@{k}"] = statistics.fmean(majority_correct(r, k) for r in rows)
        k *= 2
    out["oracle"] = statistics.fmean(any(c["correct"] for c in r["candidates"][:n]) for r in rows)
    out["answers"] = statistics.fmean(len({c.get("answer") for c in r["candidates"][:n]}) for r in rows)
    out["tokens"] = statistics.fmean(c.get("n_tokens", 0) for r in rows for c in r["candidates"][:n])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="edgetts run results JSONL, one per setting")
    args = ap.parse_args()
    files = {p: load(p) for p in args.results}
    common = set.intersection(*(set(rows) for rows in files.values()))
    if not common:
        raise SystemExit("no problem is in every file")
    table = {p: summarise([rows[i] for i in sorted(common)]) for p, rows in files.items()}
    columns = list(next(iter(table.values())))
    print(f"{len(common)} problems in every file")
    print(f"{'file':<40}" + "".join(f"{c:>9}" for c in columns))
    for p, s in table.items():
        cells = "".join(f"{v:>9.1f}" if c in ("answers", "tokens") else f"{v:>9.1%}" for c, v in s.items())
        print(f"{Path(p).name:<40}{cells}")


if __name__ == "__main__":
    main()
