"""edgetts's batched sampling against llama.cpp's own tools, on the same model, threads and machine.

The anchor for the throughput work: what llama.cpp itself reaches when it decodes B sequences
together (``llama-batched-bench``, shared prompt), what a user would otherwise run
(``llama-server --parallel 16`` answering 16 concurrent requests for the same prompt), and what
edgetts's one-prefill, forked-sequence sampling reaches at the same N. Generated tokens per
second, aggregate over the sequences, medians of ``--repeats``, ratios to llama-batched-bench.

The tools are built once from the llama.cpp that llama-cpp-python's source distribution carries
(the same version edgetts runs), into ``$EDGETTS_HOME/llama-tools/<version>`` (needs cmake and a
C++ compiler; ``pip install cmake`` brings cmake):

    python tools/bench_llama_cpp.py --build-only        # build (minutes, once)
    python tools/bench_llama_cpp.py                      # N = 1 4 16 32, 64 tokens, 3 repeats
    python tools/bench_llama_cpp.py --n 16 --tokens 128 --repeats 5 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import llama_cpp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sampling import QUESTION, bench_batched  # noqa: E402

from edgetts.llama.cpu_buffers import amx_allowed, cpu_has_amx  # noqa: E402
from edgetts.models import resolve  # noqa: E402
from edgetts.paths import home  # noqa: E402
from edgetts.policy import LlamaPolicy, PolicyConfig  # noqa: E402

TARGETS = ("llama-batched-bench", "llama-server")


def tools_dir() -> Path:
    return home() / "llama-tools" / llama_cpp.__version__


def build_tools() -> Path:
    """Build the llama.cpp tools once from llama-cpp-python's sdist; returns their bin folder."""
    bin_dir = tools_dir() / "bin"
    if all((bin_dir / t).is_file() for t in TARGETS):
        return bin_dir
    cmake = shutil.which("cmake")
    if cmake is None:
        raise SystemExit("building llama.cpp's tools needs cmake: pip install cmake")
    with tempfile.TemporaryDirectory(prefix="edgetts-llama-tools-") as tmp:
        version = llama_cpp.__version__
        print(f"fetching llama-cpp-python {version}'s source distribution ...", file=sys.stderr)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--dest",
                tmp,
                f"llama-cpp-python=={version}",
            ],
            check=True,
        )
        with tarfile.open(next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))) as sdist:
            sdist.extractall(tmp, filter="data")
        source = next(Path(tmp).glob("llama_cpp_python-*/vendor/llama.cpp"))
        build = Path(tmp) / "build"
        print(f"building {', '.join(TARGETS)} (minutes) ...", file=sys.stderr)
        subprocess.run(
            [
                cmake,
                "-S",
                str(source),
                "-B",
                str(build),
                "-DCMAKE_BUILD_TYPE=Release",
                "-DLLAMA_CURL=OFF",
                "-DBUILD_SHARED_LIBS=OFF",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        subprocess.run(
            [cmake, "--build", str(build), "--target", *TARGETS, "-j", str(os.cpu_count())],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        bin_dir.mkdir(parents=True, exist_ok=True)
        for target in TARGETS:
            shutil.copy2(build / "bin" / target, bin_dir / target)
    return bin_dir


def safe_cpu_flags() -> list[str]:
    """On an AMX host llama.cpp's tools would put weights in the AMX buffer, which segfaults
    (edgetts/llama/cpu_buffers.py); they cannot drop AMX alone, so they go without repacking.
    On this project's AMX host that runs as fast as repacking (docs/bench, CPU weight buffers)."""
    return ["--no-repack"] if cpu_has_amx() and not amx_allowed() else []


def batched_bench(bin_dir: Path, model: Path, ns: list[int], tokens: int, prompt: int, threads: int) -> dict:
    """llama-batched-bench with a shared prompt: generation tok/s (S_TG) per batch size."""
    cmd = [
        str(bin_dir / "llama-batched-bench"),
        "-m",
        str(model),
        "-c",
        str(max(ns) * (prompt + tokens) + 64),
        "-b",
        "2048",
        "-ub",
        "512",
        "-npp",
        str(prompt),
        "-ntg",
        str(tokens),
        "-npl",
        ",".join(map(str, ns)),
        "-pps",
        "-t",
        str(threads),
        *safe_cpu_flags(),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rates = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 8 and cells[0].isdigit():
            rates[int(cells[2])] = float(cells[7])  # PP | TG | B | N_KV | T_PP | S_PP | T_TG | S_TG
    return rates


def server_bench(bin_dir: Path, model: Path, n: int, tokens: int, threads: int, prompt: str) -> float:
    """llama-server with ``n`` slots answering ``n`` concurrent requests: generated tok/s."""
    port = 8000 + os.getpid() % 1000
    proc = subprocess.Popen(
        [
            str(bin_dir / "llama-server"),
            "-m",
            str(model),
            "--parallel",
            str(n),
            "-c",
            str(n * (len(prompt) // 2 + tokens + 64)),
            "-t",
            str(threads),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *safe_cpu_flags(),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        counts: list[int] = []

        def one(i: int) -> None:
            body = json.dumps(
                {
                    "prompt": prompt,
                    "n_predict": tokens,
                    "temperature": 0.8,
                    "seed": i,
                    "cache_prompt": True,
                    "ignore_eos": True,
                }
            ).encode()
            req = urllib.request.Request(
                f"{base}/completion", data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=600) as resp:
                counts.append(json.loads(resp.read())["tokens_predicted"])

        start = time.perf_counter()
        workers = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return sum(counts) / (time.perf_counter() - start)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="registry name or .gguf (default model)")
    ap.add_argument("--n", type=int, nargs="+", default=[1, 4, 16, 32])
    ap.add_argument("--tokens", type=int, default=64, help="generated tokens per sequence")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--server-n", type=int, default=16, help="llama-server slots and clients")
    ap.add_argument("--build-only", action="store_true")
    args = ap.parse_args()
    bin_dir = build_tools()
    if args.build_only:
        print(bin_dir)
        return
    model = resolve(args.model)
    policy = LlamaPolicy(
        PolicyConfig(
            model=args.model,
            n_seq_max=max(args.n),
            max_tokens=args.tokens,
            n_threads=args.threads,
            temperature=0.8,
        )
    )
    prompt_text = policy.prompt_text(QUESTION)
    prompt_tokens = len(policy.prompt_tokens(QUESTION))
    runs: dict[tuple[str, int], list[float]] = {}
    for r in range(args.repeats):  # the ways interleave, so a noisy neighbour slows all alike
        for n, rate in batched_bench(
            bin_dir, model, args.n, args.tokens, prompt_tokens, args.threads
        ).items():
            runs.setdefault(("llama-batched-bench", n), []).append(rate)
        for n in args.n:
            generated, _, seconds = bench_batched(policy, n, args.tokens, 1000 * r)
            runs.setdefault(("edgetts", n), []).append(generated / seconds)
        rate = server_bench(bin_dir, model, args.server_n, args.tokens, args.threads, prompt_text)
        runs.setdefault(("llama-server", args.server_n), []).append(rate)
        print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    policy.close()

    print(
        f"{model.name}, {args.threads} threads, {args.tokens} generated tokens per sequence, "
        f"prompt {prompt_tokens} tokens, median of {args.repeats}; generated tok/s, all sequences"
    )
    header = f"{'N':>4} {'llama-batched-bench':>20} {'edgetts':>9} {'ratio':>7} {'llama-server':>13}"
    print(header)
    print("-" * len(header))
    for n in sorted({n for _, n in runs}):
        ref = runs.get(("llama-batched-bench", n))
        ours = runs.get(("edgetts", n))
        server = runs.get(("llama-server", n))
        cells = [
            f"{statistics.median(ref):>20.1f}" if ref else f"{'-':>20}",
            f"{statistics.median(ours):>9.1f}" if ours else f"{'-':>9}",
            f"{statistics.median(ours) / statistics.median(ref):>6.0%}" if ref and ours else f"{'-':>7}",
            f"{statistics.median(server):>13.1f}" if server else f"{'-':>13}",
        ]
        print(f"{n:>4} " + " ".join(cells))


if __name__ == "__main__":
    main()
