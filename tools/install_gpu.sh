#!/usr/bin/env bash
# Install edgetts for a CUDA machine: a CUDA build of llama.cpp for the policy and onnxruntime-gpu
# for the PRM, with no CPU onnxruntime left to shadow it. Run from anywhere; installs this checkout
# (editable) into the Python given as $PYTHON (default: python3 on PATH, so activate a venv first).
#
#   tools/install_gpu.sh                      # then: edgetts gpu --require-cuda
#   EDGETTS_CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=native" tools/install_gpu.sh   # faster build
#
# Why a script and not only `pip install edgetts[gpu]`: llama-cpp-python compiles llama.cpp when it
# installs, and only CMAKE_ARGS at that moment make it a CUDA build; and onnxruntime (a base
# dependency, so that a CPU machine works) and onnxruntime-gpu write the same `onnxruntime` package,
# which an extra cannot undo. So: install with the extra, rebuild llama-cpp-python (the pinned
# version) with CUDA, then remove both onnxruntimes and put onnxruntime-gpu back alone.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "install_gpu.sh: nvidia-smi not found: this is no CUDA machine (or the NVIDIA driver is" \
         "missing); on a CPU machine use the README's plain install" >&2
    exit 1
fi
if ! command -v nvcc >/dev/null 2>&1 && [ ! -x /usr/local/cuda/bin/nvcc ]; then
    echo "install_gpu.sh: nvcc not found: building llama.cpp for CUDA needs the CUDA toolkit" \
         "(e.g. /usr/local/cuda/bin on PATH)" >&2
    exit 1
fi
command -v nvcc >/dev/null 2>&1 || export PATH=/usr/local/cuda/bin:$PATH

# The one pinned llama-cpp-python version is the one in pyproject.toml.
LLAMA_VERSION=$(sed -n 's/.*"llama-cpp-python==\([^"]*\)".*/\1/p' "$ROOT/pyproject.toml")
[ -n "$LLAMA_VERSION" ] || { echo "install_gpu.sh: no llama-cpp-python pin in pyproject.toml" >&2; exit 1; }

echo "== edgetts with the gpu extra"
"$PY" -m pip install -e "$ROOT[gpu]"

echo "== llama-cpp-python $LLAMA_VERSION, built with CUDA (minutes)"
# --no-deps: the dependencies are in place; only the compiled library changes.
CMAKE_ARGS="-DGGML_CUDA=on ${EDGETTS_CMAKE_ARGS:-}" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
    "$PY" -m pip install --force-reinstall --no-cache-dir --no-deps "llama-cpp-python==$LLAMA_VERSION"

echo "== onnxruntime-gpu alone"
ORT_VERSION=$("$PY" -c 'from importlib.metadata import version; print(version("onnxruntime-gpu"))')
# Both go: removing only the CPU one would delete files the GPU one shares with it.
"$PY" -m pip uninstall -y onnxruntime onnxruntime-gpu
"$PY" -m pip install --no-deps --force-reinstall "onnxruntime-gpu==$ORT_VERSION"

echo "== check"
"$PY" -m edgetts.cli gpu --require-cuda
