"""Decode speed with one unified KV cache against one KV stream per sequence, side by side.

edgetts keeps every sequence in one unified KV cache (``kv_unified = True`` in
``edgetts/llama/context.py``, so this makes its own context), and a prompt forked into N
samples is stored once. The price: in llama.cpp each decoded row's attention runs over every
used cell of the cache (other rows' cells masked), so a wide batch, or other searches'
sequences kept in the same cache, make every row dearer. With ``kv_unified = False``
(llama-server's default) each sequence has its own stream and attends to its own cells only,
but a fork copies the prompt into each stream.

This measures the difference on this machine: B rows forked from one prompt, decoded
``--tokens`` steps, optionally with ``--idle`` other sequences of ``--idle-cells`` cells each
sitting in the cache (other searches' prompts and paths, as in ``edgetts serve --concurrent``).
The two ways interleave within each repeat; the table prints median generated tok/s.

    EDGETTS_THREADS=1 python tools/bench_kv_streams.py --rows 4 16 32 --idle 0 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import llama_cpp
import numpy as np

from edgetts.llama.context import LlamaBatch
from edgetts.llama.model import LlamaModel
from edgetts.models import resolve
from edgetts.policy import default_threads

PROMPT_TOKENS = 120
WARMUP_STEPS = 8  # first steps excluded: buffers and caches settle


def decode_rate(
    model: LlamaModel, rows: int, unified: bool, steps: int, idle: int, idle_cells: int, threads: int
) -> float:
    """Generated tok/s of ``rows`` sequences forked from one prompt, ``idle`` others in the cache."""
    n_seq = rows + 1 + idle
    params = llama_cpp.llama_context_default_params()
    if unified:
        params.n_ctx = PROMPT_TOKENS + rows * (steps + 8) + idle * (idle_cells + 8) + 256
    else:  # every stream gets n_ctx / n_seq_max cells: room for the longest sequence
        params.n_ctx = n_seq * (max(PROMPT_TOKENS + steps, idle_cells) + 16)
    params.n_batch = params.n_ubatch = 512
    params.n_seq_max = n_seq
    params.n_threads = params.n_threads_batch = threads
    params.kv_unified = unified
    params.no_perf = True
    ctx = llama_cpp.llama_init_from_model(model.ptr, params)
    if not ctx:
        raise SystemExit(f"llama.cpp could not make a context of {params.n_ctx} cells")
    batch = LlamaBatch(512)
    rng = np.random.default_rng(0)

    def decode(items: list[tuple[int, int, int, bool]]) -> None:
        batch.clear()
        for token, pos, seq, logits in items:
            batch.add(token, pos, seq, logits)
        if llama_cpp.llama_decode(ctx, batch.ptr) != 0:
            raise SystemExit("llama_decode failed (KV cache full?)")

    try:
        for k in range(idle):  # other searches' cells, never decoded further
            tokens = rng.integers(100, 20000, idle_cells)
            for start in range(0, idle_cells, 256):
                chunk = tokens[start : start + 256]
                decode([(int(t), start + j, rows + 1 + k, False) for j, t in enumerate(chunk)])
        prompt = rng.integers(100, 20000, PROMPT_TOKENS)
        decode([(int(t), j, 0, j == PROMPT_TOKENS - 1) for j, t in enumerate(prompt)])
        memory = llama_cpp.llama_get_memory(ctx)
        for seq in range(1, rows + 1):
            llama_cpp.llama_memory_seq_cp(memory, 0, seq, -1, -1)
        seconds = 0.0
        for step in range(steps):
            tokens = rng.integers(100, 20000, rows)  # one row per forked sequence
            items = [(int(t), PROMPT_TOKENS + step, seq, True) for seq, t in enumerate(tokens, start=1)]
            start = time.perf_counter()
            decode(items)
            if step >= WARMUP_STEPS:
                seconds += time.perf_counter() - start
    finally:
        batch.close()
        llama_cpp.llama_free(ctx)
    return rows * (steps - WARMUP_STEPS) / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="registry name or .gguf (default model)")
    ap.add_argument("--rows", type=int, nargs="+", default=[4, 16, 32])
    ap.add_argument("--idle", type=int, nargs="+", default=[0, 8], help="idle sequences in the cache")
    ap.add_argument("--idle-cells", type=int, default=300)
    ap.add_argument("--tokens", type=int, default=128, help="decode steps per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=default_threads())
    args = ap.parse_args()
    if args.tokens <= WARMUP_STEPS:
        ap.error(f"--tokens must exceed {WARMUP_STEPS}")
    llama_cpp.llama_backend_init()
    model = LlamaModel(resolve(args.model))
    print(f"# KV cache layout, {args.threads} thread(s), {args.tokens} steps, medians of {args.repeats}")
    print("| rows | idle sequences | unified tok/s | per-sequence streams tok/s | ratio |")
    print("|---:|---:|---:|---:|---:|")
    for rows in args.rows:
        for idle in args.idle:
            rates: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(args.repeats):
                for unified in (True, False):
                    rates[unified].append(
                        decode_rate(model, rows, unified, args.tokens, idle, args.idle_cells, args.threads)
                    )
            u, s = statistics.median(rates[True]), statistics.median(rates[False])
            print(f"| {rows} | {idle} | {u:.1f} | {s:.1f} | {s / u:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
