"""One dataset run three ways: 1 process x 2 threads, 1 process x 1 thread, 2 Ray actors x 1 thread.

Each configuration is the real ``edgetts run`` (a subprocess, a fresh results file), timed from
start to exit, model loading and Ray start included. The table puts side by side: wall time,
generated tokens per second of wall time, the median seconds a problem's solve took, speed-up
against 1 process x 1 thread, whether every problem's answer and candidate texts equal those of the
one process at one thread (the actors' thread count; a different count may round llama.cpp's sums
differently), and the overhead per problem: wall time not spent in solves, per problem
and per worker (``(wall x workers - sum of solve seconds) / problems``), which for Ray includes
starting the instance, the actors and the round trips.

    EDGETTS_THREADS=1 python tools/bench_ray.py --data ../shared/data/gsm8k_test.jsonl --limit 20 \\
        --strategy majority -n 4 --work runs/bench_ray --json docs/bench/ray.json

A configuration whose results file is complete is not run again (delete --work to remeasure).

``--roundtrip K`` measures Ray's own cost per problem instead: K problems that take no time
through the same driver loop (``run_sharded``) on 2 actors of a local Ray instance; the median of
(row back - problem sent - the actor's own time in the call), in milliseconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {  # name: (extra edgetts run arguments, workers)
    "1 process x 2 threads": (["--threads", "2"], 1),
    "1 process x 1 thread": (["--threads", "1"], 1),
    "2 Ray actors x 1 thread": (["--ray", "local", "--actors", "2", "--threads", "1"], 2),
}
BASELINE = "1 process x 1 thread"


def run_config(name: str, extra: list[str], args: argparse.Namespace) -> dict:
    out = args.work / (name.replace(" ", "_") + ".jsonl")
    timing = out.with_suffix(".time.json")
    if timing.exists() and out.exists():
        return json.loads(timing.read_text())  # measured before: keep it
    out.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "edgetts.cli",
        "run",
        "--data",
        str(args.data),
        "--out",
        str(out),
        "--limit",
        str(args.limit),
        "--strategy",
        args.strategy,
        "-n",
        str(args.n),
        "--max-tokens",
        str(args.max_tokens),
        "--seed",
        str(args.seed),
        *extra,
    ]
    print(f"{name}: {' '.join(cmd[3:])}", file=sys.stderr, flush=True)
    load_before = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "EDGETTS_THREADS": "1"})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    record = {
        "name": name,
        "out": str(out),
        "wall_s": round(wall, 2),
        "stdout": proc.stdout.strip(),
        "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    timing.write_text(json.dumps(record))
    return record


def summarize(record: dict, workers: int) -> tuple[dict, dict[str, tuple]]:
    """One configuration's table row, and each problem's (answer, candidate texts)."""
    rows = [json.loads(line) for line in Path(record["out"]).read_text().splitlines() if line.strip()]
    seconds = [r["seconds"] for r in rows]
    generated = sum(r["counters"].get("tokens_generated", 0) for r in rows)
    sampled = {r["id"]: (r["answer"], [c["text"] for c in r["candidates"]]) for r in rows}
    wall = record["wall_s"]
    return {
        "config": record["name"],
        "problems": len(rows),
        "wall_s": wall,
        "tok_per_s": round(generated / wall, 1),
        "tokens_generated": generated,
        "median_solve_s": round(statistics.median(seconds), 2),
        "overhead_s_per_problem": round((wall * workers - sum(seconds)) / len(rows), 2),
        "correct": sum(bool(r["correct"]) for r in rows),
        "accuracy_line": record["stdout"],
        "loadavg_1min_before_after": record.get("loadavg_1min"),
    }, sampled


def _no_work():
    """A worker that answers at once: what is left of a problem's time is Ray's."""
    return lambda problem: {"id": problem.id}


def roundtrip(k: int) -> None:
    import ray

    from edgetts.distributed.run import run_sharded

    @dataclasses.dataclass
    class Item:
        id: str

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        rows: list[dict] = []
        report = run_sharded([Item(str(i)) for i in range(k)], _no_work, rows.append, actors=2, threads=1)
    finally:
        ray.shutdown()
    ms = sorted(x * 1000 for x in report.overhead_s)
    print(
        f"| problems | median ms | p95 ms | wall s (actor start included) |\n|---|---|---|---|\n"
        f"| {len(rows)} | {statistics.median(ms):.2f} | {ms[int(0.95 * (len(ms) - 1))]:.2f} | "
        f"{report.wall_s:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("../shared/data/gsm8k_test.jsonl"))
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--strategy", default="majority")
    parser.add_argument("-n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("runs/bench_ray"))
    parser.add_argument("--json", dest="json_out", type=Path, default=None)
    parser.add_argument(
        "--roundtrip",
        type=int,
        default=None,
        metavar="K",
        help="Only measure Ray's overhead per problem on K no-op problems.",
    )
    args = parser.parse_args()
    if args.roundtrip:
        roundtrip(args.roundtrip)
        return
    args.work.mkdir(parents=True, exist_ok=True)

    table, sampled = [], {}
    for name, (extra, workers) in CONFIGS.items():
        summary, sampled[name] = summarize(run_config(name, extra, args), workers)
        table.append(summary)
    # Compared with one process at one thread: Ray's actors run one thread each, and llama.cpp's
    # sums may round differently at another thread count, so only that comparison isolates Ray.
    base = next(s for s in table if s["config"] == BASELINE)
    reference = sampled[BASELINE]
    for s in table:
        s["speedup_vs_1x1"] = round(base["wall_s"] / s["wall_s"], 2)
        same = sum(sampled[s["config"]].get(pid) == value for pid, value in reference.items())
        s["identical"] = f"{same}/{len(reference)}"

    cols = [
        "config",
        "problems",
        "wall_s",
        "speedup_vs_1x1",
        "tok_per_s",
        "median_solve_s",
        "overhead_s_per_problem",
        "correct",
        "identical",
    ]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for s in table:
        print("| " + " | ".join(str(s[c]) for c in cols) + " |")
    for s in table:
        print(
            f"{s['config']}: {s['accuracy_line']}; 1-min load average before/after "
            f"{s['loadavg_1min_before_after']}"
        )
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(
            json.dumps(
                {
                    "settings": vars(args)
                    | {"data": str(args.data), "work": str(args.work), "json_out": str(args.json_out)},
                    "table": table,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
