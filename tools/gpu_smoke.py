"""The policy's mechanics on the GPU against the CPU, on a small model, in about a minute.

Where the real policy cannot travel (the lent GPU machine takes 64 MiB; `tools/gpu_offline.sh`),
this runs edgetts's llama.cpp paths on a tiny random model (`tools/make_tiny_gguf.py`) twice, all
layers on the CPU and all on the GPU, and checks what must hold on any model:

* the build offloads (``llama_supports_gpu_offload``);
* seeded paths from one prefill, forked, decoded in one batch per token: the GPU's tokens against
  the CPU's (float differences may part them after a near tie: the share of equal leading tokens
  is reported, and the first token must agree);
* the layer tap (``state_layers``: block 0 and the final norm) reads GPU-resident tensors: every
  step state is there and finite, and close to the CPU's (cosine);
* parking: more children than KV slots, parked paths restored from host memory
  (``llama_state_seq_get/set_data`` on GPU KV) and counted as restored, none re-decoded;
* batched sampling speed at N = 1, 16, 64 on each (the tiny model's, so only the ratio between
  rows says anything about the loop).

Prints a table and writes it as JSON (``--json``); exits 1 when a check fails. ``--bisect-load``
instead loads the model after each of edgetts's set-up steps in turn, each in its own process
(what a crash at load needs first)::

    python tools/gpu_smoke.py --model .gpu/tiny-qwen2.gguf --json $OUT/smoke.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edgetts.policy import LlamaPolicy, PolicyConfig, default_threads
from edgetts.search.base import Sampling

QUESTION = "Tom has 12 apples and gives away 5. How many apples does he have left?"
# Seeded sampling, not greedy: the random model's greedy text is "\n" over and over, which makes
# no step (and so no step state); the same seed draws the same tokens from equal logits.
SEEDED = Sampling(temperature=1.0, seed=3, max_tokens=48, record_tokens=True)


def policy(model: str, gpu_layers: int, **changes) -> LlamaPolicy:
    settings = {"n_seq_max": 8, "max_tokens": 128, "capture_states": True, "state_layers": (0, -1)}
    settings.update(changes)
    return LlamaPolicy(PolicyConfig(model=model, n_gpu_layers=gpu_layers, **settings))


def seeded_run(model: str, gpu_layers: int) -> dict:
    """Four seeded paths from one prefill: their tokens, steps and step states."""
    pol = policy(model, gpu_layers)
    try:
        paths = pol.extend([pol.root(QUESTION, SEEDED)], 4, to_end=True)
        out = {
            "tokens": [[bytes(t).hex() for t in p.token_pieces] for p in paths],
            "steps": [list(p.steps) for p in paths],
            "states": [[np.asarray(s, dtype=np.float64) for s in p.step_states] for p in paths],
        }
        pol.release(paths)
        return out
    finally:
        pol.close()


def replayed_states(model: str, gpu_layers: int, solutions: list[list[str]]) -> list[list[np.ndarray]]:
    """The step states of written solutions decoded after the prompt (``path_from``): the same
    text on either device, so their states can be compared whatever the sampling did."""
    pol = policy(model, gpu_layers)
    try:
        states = []
        for steps in solutions:
            path = pol.path_from(QUESTION, steps)
            states.append([np.asarray(s, dtype=np.float64) for s in path.step_states])
            pol.release([path])
        return states
    finally:
        pol.close()


def parking_run(model: str, gpu_layers: int) -> dict:
    """Twice as many children as slots, twice: parents are parked and restored."""
    # Steps of 8 tokens at most: the random text seldom writes a step separator of its own.
    pol = policy(model, gpu_layers, n_seq_max=4, park_mb=256.0, max_step_tokens=8)
    try:
        hot = Sampling(temperature=0.8, max_tokens=96, seed=1)
        live = pol.extend([pol.root(QUESTION, hot)], 4)
        for _ in range(2):
            keep = [p for p in live if not p.finished][:4]
            pol.release([p for p in live if all(p is not k for k in keep)])
            if not keep:
                break
            live = pol.extend(keep, 2)
        pol.release(live)
        c = pol.counters
        return {
            "restored": c.tokens_restored,
            "redecoded": c.tokens_redecoded,
            "parked_bytes": c.bytes_parked,
        }
    finally:
        pol.close()


def speed(model: str, gpu_layers: int, n: int, max_tokens: int = 128) -> float:
    """Generated tokens per second of ``n`` samples from one prefill, to the end or the cap."""
    pol = policy(model, gpu_layers, n_seq_max=n, capture_states=False, max_tokens=max_tokens)
    try:
        sampling = Sampling(temperature=0.8, max_tokens=max_tokens, seed=0)
        pol.extend([pol.root(QUESTION, sampling)], 1, to_end=True)  # warm-up (and the prefill)
        start = time.perf_counter()
        paths = pol.extend([pol.root(QUESTION, sampling)], n, to_end=True)
        seconds = time.perf_counter() - start
        return sum(p.n_tokens for p in paths) / seconds
    finally:
        pol.close()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def leading_equal(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


# Model loads that differ by one piece of edgetts's set-up, each in a process of its own (a crash
# kills only its own): which piece a GPU build fails on. Each line runs before the load.
LOAD_STEPS = {
    "plain llama.cpp": "",
    "after llama_print_system_info()": "llama_cpp.llama_print_system_info()",
    "after edgetts's log callback": "from edgetts.llama.logs import route_llama_logs; route_llama_logs()",
    "after the CPU buffer edit": "from edgetts.llama.cpu_buffers import apply_cpu_buffer_policy; "
    "apply_cpu_buffer_policy()",
    "edgetts LlamaModel": "from edgetts.llama.model import LlamaModel\n"
    "LlamaModel(MODEL, LAYERS)\nraise SystemExit",
}
LOAD = """
import sys
from pathlib import Path
import llama_cpp
MODEL, LAYERS = Path(sys.argv[1]), int(sys.argv[2])
llama_cpp.llama_backend_init()
{step}
params = llama_cpp.llama_model_default_params()
params.n_gpu_layers = LAYERS
assert llama_cpp.llama_model_load_from_file(str(MODEL).encode(), params)
"""


def bisect_load(model: str, gpu_layers: int) -> list[tuple[str, bool, str]]:
    """Load the model once per :data:`LOAD_STEPS` entry, each in a fresh process."""
    rows = []
    for name, step in LOAD_STEPS.items():
        run = subprocess.run(
            [sys.executable, "-X", "faulthandler", "-c", LOAD.format(step=step), model, str(gpu_layers)],
            capture_output=True,
            text=True,
        )
        rows.append((f"load {name}", run.returncode == 0, f"exit {run.returncode}"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--json", default=None)
    ap.add_argument("--bisect-load", action="store_true", help="only load the model after each set-up step")
    ap.add_argument(
        "--gpu-layers",
        type=int,
        default=-1,
        help="layers the 'gpu' run offloads (0: a dry run of this script on CPU)",
    )
    args = ap.parse_args()
    layers = args.gpu_layers
    if args.bisect_load:
        report(bisect_load(args.model, layers), {}, args.json)

    import llama_cpp

    checks: list[tuple[str, bool, str]] = []
    offload = bool(llama_cpp.llama_supports_gpu_offload())
    checks.append(
        ("build offloads to a GPU", offload or layers == 0, f"llama_supports_gpu_offload = {offload}")
    )
    if not offload and layers != 0:
        report(checks, {}, args.json)
        return

    cpu, gpu = seeded_run(args.model, 0), seeded_run(args.model, layers)
    equal = [leading_equal(a, b) for a, b in zip(cpu["tokens"], gpu["tokens"], strict=True)]
    total = [max(len(a), 1) for a in cpu["tokens"]]
    checks.append(
        (
            "sampled tokens at one seed, GPU against CPU",
            all(e >= 1 for e in equal),
            f"leading tokens equal {sum(equal)}/{sum(total)} ({equal} of {total})",
        )
    )
    states_ok = all(s and all(x.size and np.isfinite(x).all() for x in s) for s in gpu["states"])
    checks.append(
        ("layer tap on GPU tensors (block 0 + final)", states_ok, f"{sum(map(len, gpu['states']))} states")
    )
    written = [steps for steps in cpu["steps"] if steps]
    cosines = [
        cosine(a, b)
        for cs, gs in zip(
            replayed_states(args.model, 0, written), replayed_states(args.model, layers, written), strict=True
        )
        for a, b in zip(cs, gs, strict=True)
    ]
    checks.append(
        (
            "step states of the same text, GPU against CPU",
            bool(cosines) and min(cosines) > 0.99,
            f"min cosine {min(cosines, default=float('nan')):.5f} over {len(cosines)} states",
        )
    )

    parked = parking_run(args.model, layers)
    checks.append(
        (
            "parking GPU KV in host memory",
            parked["restored"] > 0 and parked["redecoded"] == 0,
            f"restored {parked['restored']} tokens, re-decoded {parked['redecoded']}, "
            f"{parked['parked_bytes'] / 2**10:.0f} KiB copied",
        )
    )

    speeds = {
        f"{where} N={n}": speed(args.model, n_layers, n)
        for where, n_layers in (("cpu", 0), ("gpu", layers))
        for n in (1, 16, 64)
    }
    report(checks, {"tok_per_s": speeds, "cpu_threads": default_threads()}, args.json)


def report(checks: list[tuple[str, bool, str]], extra: dict, json_path: str | None) -> None:
    width = max(len(name) for name, _, _ in checks)
    for name, ok, detail in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name:<{width}}  {detail}")
    for key, value in extra.get("tok_per_s", {}).items():
        print(f"      {key:<{width}}  {value:8.1f} tok/s")
    if json_path:
        rows = [{"name": n, "ok": ok, "detail": d} for n, ok, d in checks]
        Path(json_path).write_text(json.dumps({"checks": rows, **extra}, indent=1))
    sys.exit(0 if all(ok for _, ok, _ in checks) else 1)


if __name__ == "__main__":
    main()
