#!/usr/bin/env bash
# The GPU check for a CUDA machine with no package index and no room for the real policy
# (the GPU machine this project is sometimes lent takes a 64 MiB working tree and reaches
# nothing). tools/gpu_check.sh is the full check where pip and the real models are at hand.
#
#   tools/gpu_offline.sh bundle   # here, with PyPI: fills .gpu/ (~22 MB, git-ignored)
#   tools/gpu_offline.sh check    # there: build, then tools/gpu_smoke.py (a few minutes)
#
# bundle: llama-cpp-python's sdist (the pinned version) without llama.cpp's model files, docs,
#   tests and the backends other than CPU and CUDA (~5 MB), the pure-Python wheels edgetts needs
#   beyond a CUDA image's usual packages, and a tiny random model with the default policy's
#   tokenizer (tools/make_tiny_gguf.py).
# check: compiles llama.cpp for this GPU only (flash-attention kernels left out: an f16 cache
#   lets llama.cpp choose, and they take most of the build), installs it into a private
#   site directory, then runs `edgetts gpu --require-cuda` and tools/gpu_smoke.py (GPU against
#   CPU: tokens, the layer tap on GPU tensors, parking GPU KV, batched speed). Logs and the
#   smoke JSON go to $OUT (or runs/gpu_offline).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUNDLE=${EDGETTS_GPU_BUNDLE:-$ROOT/.gpu}
PY=${PYTHON:-python3}

bundle() {
    local version tmp
    version=$("$PY" -c "import importlib.metadata as m; print(m.version('llama_cpp_python'))")
    mkdir -p "$BUNDLE/wheels"
    tmp=$(mktemp -d)
    "$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$tmp"
    tar xzf "$tmp"/llama_cpp_python-"$version".tar.gz -C "$tmp"
    local src=$tmp/llama_cpp_python-$version lc=$tmp/llama_cpp_python-$version/vendor/llama.cpp
    rm -rf "$src"/{.git,.github,docs,examples,tests,docker} "$lc"/{.git,.github,.devops}
    rm -rf "$lc"/{models,docs,tests,benches,media,examples,pocs,conversion,scripts,gguf-py,app}
    find "$lc/tools" -mindepth 1 -maxdepth 1 ! -name mtmd ! -name CMakeLists.txt -exec rm -rf {} +
    find "$lc/ggml/src" -mindepth 1 -maxdepth 1 -type d -name 'ggml-*' \
        ! -name ggml-cpu ! -name ggml-cuda -exec rm -rf {} +
    tar czf "$BUNDLE/llama_cpp_python-$version-trim.tar.gz" -C "$tmp" "llama_cpp_python-$version"
    rm -rf "$tmp"
    for pkg in gguf platformdirs math-verify latex2sympy2_extended antlr4-python3-runtime diskcache; do
        "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any \
            -d "$BUNDLE/wheels" "$pkg==$("$PY" -c "import importlib.metadata as m; print(m.version('$pkg'))")"
    done
    (cd "$ROOT" && "$PY" tools/make_tiny_gguf.py --out "$BUNDLE/tiny-qwen2.gguf")
    du -sh "$BUNDLE"
}

check() {
    local out=${OUT:-$ROOT/runs/gpu_offline} site=/tmp/edgetts-gpu-site src=/tmp/edgetts-gpu-src t0
    mkdir -p "$out" "$src"
    command -v nvidia-smi >/dev/null || { echo "gpu_offline.sh: no nvidia-smi: not a CUDA machine" >&2; exit 1; }
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
    t0=$(date +%s)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$BUNDLE"/wheels/*.whl
    tar xzf "$BUNDLE"/llama_cpp_python-*-trim.tar.gz -C "$src"
    CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-90} -DGGML_CUDA_FA=OFF \
-DGGML_CUDA_NCCL=OFF -DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
        "$PY" -m pip install --no-index --no-deps --no-build-isolation --target "$site" \
        "$src"/llama_cpp_python-* >"$out/build.log" 2>&1 \
        || { tail -n 40 "$out/build.log" >&2; echo "gpu_offline.sh: build failed" >&2; exit 1; }
    echo "build: $(($(date +%s) - t0)) s" | tee -a "$out/gpu.txt"
    export PYTHONPATH=$site:$ROOT
    (cd "$ROOT" && "$PY" -m edgetts.cli gpu --require-cuda 2>&1 | tee -a "$out/gpu.txt") || true
    cd "$ROOT"
    "$PY" tools/gpu_smoke.py --model "$BUNDLE/tiny-qwen2.gguf" --json "$out/smoke.json" 2>&1 | tee "$out/smoke.txt" \
        || { echo "gpu_offline.sh: the smoke check failed; loading after each set-up step:" >&2
             "$PY" tools/gpu_smoke.py --model "$BUNDLE/tiny-qwen2.gguf" --bisect-load --gpu-layers 0 \
                 --json "$out/bisect.json" 2>&1 | tee "$out/bisect.txt"; exit 1; }
}

case "${1:-}" in
    bundle) bundle ;;
    check) check ;;
    *) echo "usage: tools/gpu_offline.sh bundle|check" >&2; exit 2 ;;
esac
