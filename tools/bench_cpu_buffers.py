"""Prefill and decode speed under each choice of llama.cpp CPU weight buffers, side by side.

llama.cpp repacks weights into extra CPU buffer types; on Intel AMX hosts its AMX buffer can
segfault at the first decode (edgetts/llama/cpu_buffers.py). This compares, on this machine:

* ``repack``   - edgetts's default: the extra buffer types without AMX (CPU_REPACK kept);
* ``no-extra`` - the blunt workaround: ``use_extra_bufts = False`` (plain weights only);
* ``amx``      - llama.cpp's own default, AMX included (``EDGETTS_CPU_AMX=1``).

Each run is a fresh process (the buffer choice is process-wide, and AMX may crash), the
configurations interleave within every repeat so a noisy neighbour slows all alike, and the
table prints medians. Decode uses tools/bench_sampling.py's way (a): one prefill, N forks.

    python tools/bench_cpu_buffers.py                       # N = 1 and 16, 128 tokens, 3 repeats
    python tools/bench_cpu_buffers.py --threads 1 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = ("repack", "no-extra", "amx")
# About 420 prompt tokens: long enough that prefill speed shows, distinct per repeat (no reuse).
PREFILL_TEXT = "Count the apples, pears and plums in every basket and explain each step. " * 30


def child(config: str, ns: list[int], max_tokens: int, threads: int, seed: int) -> dict:
    """One measurement in this process under ``config``; returns tok/s figures."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_sampling import bench_batched

    import edgetts.policy as policy_module
    from edgetts.llama.cpu_buffers import CpuBufferPlan
    from edgetts.policy import LlamaPolicy, PolicyConfig

    if config == "no-extra":
        policy_module.apply_cpu_buffer_policy = lambda: CpuBufferPlan((), (), use_extra_bufts=False)
    policy = LlamaPolicy(
        PolicyConfig(
            n_seq_max=max(ns),
            max_tokens=max_tokens,
            n_threads=threads,
            n_ctx=max(ns) * (max_tokens + 64) + 1024,
        )
    )
    start = time.perf_counter()
    root = policy.root(f"{seed}: {PREFILL_TEXT}")
    prefill_s = time.perf_counter() - start
    out = {"prefill_tok_s": policy.counters.tokens_prefilled / prefill_s}
    policy.release([root])
    for n in ns:
        generated, _, seconds = bench_batched(policy, n, max_tokens, seed)
        out[f"decode_n{n}_tok_s"] = generated / seconds
    policy.close()
    return out


def run_child(config: str, args) -> dict | str:
    env = dict(os.environ, EDGETTS_CPU_AMX="1" if config == "amx" else "0")
    cmd = [
        sys.executable,
        __file__,
        "--child",
        config,
        "--n",
        *map(str, args.n),
        "--max-tokens",
        str(args.max_tokens),
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode < 0:
        return f"crashed ({signal.Signals(-proc.returncode).name})"
    if proc.returncode != 0:
        return f"failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    ap.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.n, args.max_tokens, args.threads, args.seed)))
        return

    runs: dict[str, list[dict]] = {c: [] for c in args.configs}
    failures: dict[str, str] = {}
    for r in range(args.repeats):
        for config in args.configs:
            if config in failures:
                continue
            args.seed = r
            result = run_child(config, args)
            if isinstance(result, str):
                failures[config] = result
            else:
                runs[config].append(result)
            print(f"repeat {r + 1}/{args.repeats} {config}: {result}", file=sys.stderr, flush=True)

    keys = ["prefill_tok_s", *[f"decode_n{n}_tok_s" for n in args.n]]
    print(f"{args.threads} threads, up to {args.max_tokens} tokens per sample, median of {args.repeats}")
    header = f"{'buffers':<10}" + "".join(f"{k:>18}" for k in keys)
    print(header)
    print("-" * len(header))
    for config in args.configs:
        if config in failures and not runs[config]:
            print(f"{config:<10}  {failures[config]}")
            continue
        print(f"{config:<10}" + "".join(f"{median(runs[config], k):>18.1f}" for k in keys))
    if runs.get("repack") and runs.get("no-extra"):
        ratios = [f"{k}: {median(runs['repack'], k) / median(runs['no-extra'], k):.2f}x" for k in keys]
        print("\nrepack / no-extra  " + "  ".join(ratios))


def median(rows: list[dict], key: str) -> float:
    return statistics.median(row[key] for row in rows)


if __name__ == "__main__":
    main()
