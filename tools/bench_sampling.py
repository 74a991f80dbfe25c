"""How fast N samples come out of one prompt, three ways, side by side in one run.

(a) edgetts: the prompt prefilled once, forked to N sequences, all decoded in one batch per token;
(b) what a user would otherwise write: N sequential completions with llama-cpp-python's ``Llama``;
(c) naive batching: the prompt prefilled again for every sample, then one batch per token;
(s) with ``--state-layers``: (a) again, keeping each step's hidden state of those layers (what a
    policy probe reads while a search decodes), one way per layer set, to price the capture.

Prints aggregate generated tokens per second, tokens prefilled and the ratios, each the median of
``--repeats`` runs, plus a compute roofline: 2 x params FLOP per token against a measured matmul
rate, and (a)'s fraction of it.

    python tools/bench_sampling.py                    # N in 1 4 16, 256 tokens, 3 repeats
    python tools/bench_sampling.py --n 16 --repeats 5 --threads 2
    python tools/bench_sampling.py --n 16 --skip-sequential --state-layers -1 12,-1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import zlib
from dataclasses import replace

import llama_cpp
import numpy as np

from edgetts.gpu import default_gpu_layers
from edgetts.llama.context import LlamaBatch
from edgetts.llama.sampler import Sampler
from edgetts.models import resolve
from edgetts.policy import LlamaPolicy, PolicyConfig
from edgetts.search.base import Sampling

QUESTION = (
    "A baker makes 24 muffins per tray and bakes 7 trays on Monday and 5 trays on Tuesday. "
    "He sells 3/4 of all muffins and gives 10 to a school. How many muffins are left? "
    "Explain every step in detail."
)


def bench_batched(policy: LlamaPolicy, n: int, max_tokens: int, seed: int) -> tuple[int, int, float]:
    """(a): returns (tokens generated, tokens prefilled, seconds)."""
    sampling = Sampling(temperature=policy.config.temperature, seed=seed, max_tokens=max_tokens)
    before_prefill = policy.counters.tokens_prefilled
    start = time.perf_counter()
    paths = policy.extend([policy.root(QUESTION, sampling)], n, to_end=True)
    seconds = time.perf_counter() - start
    policy.release(paths)
    return sum(p.n_tokens for p in paths), policy.counters.tokens_prefilled - before_prefill, seconds


def bench_sequential(llm: llama_cpp.Llama, prompt: str, n: int, max_tokens: int, seed: int):
    """(b): N completions one after another; counts the tokens ``Llama`` actually evaluates."""
    evaluated = 0
    original_eval = llm.eval

    def counting_eval(tokens):
        nonlocal evaluated
        evaluated += len(tokens)
        return original_eval(tokens)

    llm.eval = counting_eval
    generated = 0
    start = time.perf_counter()
    for i in range(n):
        out = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.8, top_p=1.0, seed=seed + i)
        generated += out["usage"]["completion_tokens"]
    seconds = time.perf_counter() - start
    llm.eval = original_eval
    # Every generated token but the last of each sample is evaluated; the rest is prompt.
    return generated, evaluated - (generated - n), seconds


def bench_reprefill(policy: LlamaPolicy, n: int, max_tokens: int, seed: int):
    """(c): the same batched decoding, but each sample prefills its own copy of the prompt."""
    ctx, model = policy.context, policy.model
    prompt = policy.prompt_tokens(QUESTION)
    start = time.perf_counter()
    ctx.clear()
    # one decode call takes at most the context's n_batch tokens (more fails an assert)
    batch = LlamaBatch(min(max(len(prompt), n), ctx.n_batch))
    rows = []
    for seq in range(n):  # each sample its own copy of the prompt, in n_batch pieces
        for start_pos in range(0, len(prompt), batch.capacity):
            batch.clear()
            for pos in range(start_pos, min(start_pos + batch.capacity, len(prompt))):
                batch.add(prompt[pos], pos, seq, pos == len(prompt) - 1)
            ctx.decode(batch)
        rows.append(ctx.logits_view(batch.n_tokens - 1).copy())
    samplers = [Sampler(0.8, 1.0, 0, zlib.crc32(f"{seed}:{i}".encode())) for i in range(n)]
    tokens = [s.sample_from(logits) for s, logits in zip(samplers, rows, strict=True)]
    live = {i for i in range(n) if not model.is_end(tokens[i])}
    generated, pos = len(live), len(prompt)
    while live and generated < n * max_tokens and pos < len(prompt) + max_tokens - 1:
        order = sorted(live)
        batch.clear()
        for seq in order:
            batch.add(tokens[seq], pos, seq, True)
        ctx.decode(batch)
        pos += 1
        for row, seq in enumerate(order):
            tokens[seq] = samplers[seq].sample(ctx, row)
            if model.is_end(tokens[seq]):
                live.discard(seq)
            else:
                generated += 1
    seconds = time.perf_counter() - start
    for s in samplers:
        s.close()
    batch.close()
    ctx.clear()
    return generated, n * len(prompt), seconds


def matmul_gflops(threads: int, size: int = 1024, repeats: int = 5) -> float:
    """Measured float32 matmul rate of this machine (numpy/BLAS), the roofline's ceiling."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    a @ a
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="registry name or .gguf (default model)")
    ap.add_argument("--n", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--skip-sequential", action="store_true", help="(b) is the slowest; skip it")
    ap.add_argument(
        "--state-layers",
        nargs="*",
        default=[],
        help="layer sets (comma-separated, e.g. -1 12,-1) whose step states (a) also keeps: one way each",
    )
    ap.add_argument(
        "--n-gpu-layers",
        type=int,
        default=None,
        help="layers offloaded, for every way (-1: all; default: $EDGETTS_N_GPU_LAYERS, else 0)",
    )
    args = ap.parse_args()
    gpu_layers = default_gpu_layers() if args.n_gpu_layers is None else args.n_gpu_layers

    n_max = max(args.n)
    config = PolicyConfig(
        model=args.model,
        n_seq_max=n_max,
        max_tokens=args.max_tokens,
        n_threads=args.threads,
        n_ctx=n_max * (args.max_tokens + 512),
        n_gpu_layers=gpu_layers,
    )
    policy = LlamaPolicy(config)
    capturing = {
        f"s{layers}": LlamaPolicy(
            replace(config, capture_states=True, state_layers=tuple(int(x) for x in layers.split(",")))
        )
        for layers in args.state_layers
    }
    llm = llama_cpp.Llama(
        str(resolve(args.model)),
        n_ctx=args.max_tokens + 512,
        n_threads=args.threads,
        n_gpu_layers=gpu_layers,
        verbose=False,
    )
    prompt = policy.prompt_text(QUESTION)
    ways = {
        "a": lambda n, s: bench_batched(policy, n, args.max_tokens, s),
        "c": lambda n, s: bench_reprefill(policy, n, args.max_tokens, s),
    }
    if not args.skip_sequential:
        ways["b"] = lambda n, s: bench_sequential(llm, prompt, n, args.max_tokens, s)
    for way, capturing_policy in capturing.items():
        ways[way] = lambda n, s, p=capturing_policy: bench_batched(p, n, args.max_tokens, s)

    print(
        f"model {policy.metadata.name}, {policy.metadata.n_params / 1e6:.0f}M params, "
        f"{args.threads} threads, {gpu_layers} GPU layers, up to {args.max_tokens} tokens per sample, "
        f"median of {args.repeats}",
        flush=True,
    )
    header = f"{'N':>3} {'way':<28} {'gen tok':>8} {'prefilled':>9} {'seconds':>8} {'tok/s':>8}"
    print(header)
    print("-" * len(header))
    names = {"a": "(a) batched, prefill once", "b": "(b) sequential Llama", "c": "(c) batched, re-prefill"}
    names |= {way: f"(a) + states of {way[1:]}" for way in capturing}
    rates: dict[tuple[int, str], float] = {}
    for n in args.n:
        # Repeats interleave the ways, so a noisy neighbour slows all of them alike.
        runs: dict[str, list[tuple[int, int, float]]] = {way: [] for way in ways}
        for r in range(args.repeats):
            for way, fn in ways.items():
                runs[way].append(fn(n, 1000 * r))
        for way, way_runs in runs.items():
            rate = statistics.median(g / s for g, _, s in way_runs)
            rates[n, way] = rate
            gen = statistics.median(g for g, _, _ in way_runs)
            pre = statistics.median(p for _, p, _ in way_runs)
            sec = statistics.median(s for _, _, s in way_runs)
            print(f"{n:>3} {names[way]:<28} {gen:>8.0f} {pre:>9.0f} {sec:>8.2f} {rate:>8.1f}", flush=True)
    print()
    for n in args.n:
        parts = [f"N={n}: (a)/(c) = {rates[n, 'a'] / rates[n, 'c']:.2f}x"]
        if (n, "b") in rates:
            parts.append(f"(a)/(b) = {rates[n, 'a'] / rates[n, 'b']:.2f}x")
        parts += [f"states of {way[1:]}/(a) = {rates[n, way] / rates[n, 'a']:.3f}x" for way in capturing]
        print("  ".join(parts))
    if gpu_layers != 0:  # the roofline below measures the CPU's matmul rate
        print("\nroofline: not measured (a GPU run; it measures the CPU)")
        return
    gflops = matmul_gflops(args.threads)
    roofline = gflops * 1e9 / (2 * policy.metadata.n_params)
    best = max(rates[n, "a"] for n in args.n)
    print(
        f"\nroofline: matmul {gflops:.1f} GFLOP/s / (2 x {policy.metadata.n_params / 1e6:.0f}M FLOP "
        f"per token) = {roofline:.0f} tok/s; (a) reaches {best:.1f} tok/s = {best / roofline:.1%}"
    )


if __name__ == "__main__":
    main()
