#!/usr/bin/env bash
# GPU check, in one run of a few minutes on a CUDA machine:
#   1. a venv ($EDGETTS_GPU_VENV, default .venv-gpu) with the CUDA llama-cpp-python and
#      onnxruntime-gpu alone (tools/install_gpu.sh; skipped when the venv already passes
#      `edgetts gpu --require-cuda`, unless REBUILD=1);
#   2. the slow tests (the real models) with every policy layer offloaded (EDGETTS_N_GPU_LAYERS=-1,
#      which PolicyConfig's default, the CLI and the server honour);
#   3. tools/bench_sampling.py at N = 1, 16, 64 with every layer offloaded;
#   4. tools/bench_concurrent_server.py with 8 clients (majority@8, serial engine against
#      --concurrent 8, one round): issue 21's 8-client ratio, which a 2-core CPU caps at ~1.6x;
# then one table of all four. Without nvidia-smi it refuses (exit 1): a "GPU check" on a CPU
# build would pass and prove nothing.
#
#   tools/gpu_check.sh                 # from the repository root or anywhere
#   BENCH_ARGS="--max-tokens 256 --repeats 3" tools/gpu_check.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check.sh: nvidia-smi not found: no CUDA GPU here, nothing to check" \
         "(run it on a machine with an NVIDIA GPU and the CUDA toolkit)" >&2
    exit 1
fi
if ! GPU=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -n 1) \
        || [ -z "$GPU" ]; then
    echo "gpu_check.sh: nvidia-smi found no usable GPU: $GPU" >&2
    exit 1
fi

VENV=${EDGETTS_GPU_VENV:-$ROOT/.venv-gpu}
LOG=${EDGETTS_GPU_LOG:-$ROOT/runs/gpu_check}
mkdir -p "$LOG"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY=$VENV/bin/python
export EDGETTS_N_GPU_LAYERS=-1

t0=$(date +%s)
if [ "${REBUILD:-0}" = 1 ] || ! "$PY" -m edgetts.cli gpu --require-cuda >/dev/null 2>&1; then
    # native: compile for this GPU only, minutes instead of a build for every architecture.
    PYTHON=$PY EDGETTS_CMAKE_ARGS=${EDGETTS_CMAKE_ARGS:--DCMAKE_CUDA_ARCHITECTURES=native} \
        tools/install_gpu.sh >"$LOG/install.log" 2>&1 \
        || { tail -n 30 "$LOG/install.log" >&2; echo "gpu_check.sh: install failed ($LOG/install.log)" >&2; exit 1; }
fi
# The slow tests need pytest and the OpenAI client (the server tests), not the whole dev extra
# (torch: its tests skip without it).
"$PY" -m pip install -q "pytest>=8" "openai>=1.30" >>"$LOG/install.log" 2>&1
"$PY" -m edgetts.cli gpu --require-cuda >"$LOG/gpu.txt" 2>&1 || { cat "$LOG/gpu.txt" >&2; exit 1; }
t_install=$(($(date +%s) - t0))

t0=$(date +%s)
set +e
"$PY" -m pytest -q -m slow -p no:cacheprovider >"$LOG/tests.log" 2>&1
tests_rc=$?
"$PY" tools/bench_sampling.py --n 1 16 64 --threads "$(nproc)" ${BENCH_ARGS:---max-tokens 128 --repeats 1} \
    >"$LOG/bench.txt" 2>"$LOG/bench.err"
bench_rc=$?
EDGETTS_THREADS=$(nproc) "$PY" tools/bench_concurrent_server.py --clients 8 --rounds 1 --requests 16 \
    --concurrent 8 ${SERVER_ARGS:-} >"$LOG/server.txt" 2>"$LOG/server.err"
server_rc=$?
set -e
t_run=$(($(date +%s) - t0))

tests_line=$(grep -E "[0-9]+ (passed|failed)" "$LOG/tests.log" | tail -n 1 || true)
echo
echo "edgetts GPU check ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%F))"
printf '%-16s %s\n' "GPU" "$GPU"
while IFS= read -r line; do printf '%-16s %s\n' "" "$line"; done <"$LOG/gpu.txt"
printf '%-16s %s\n' "install" "${t_install} s ($LOG/install.log)"
printf '%-16s %s\n' "slow tests" "${tests_line:-no summary, exit $tests_rc} (all layers on the GPU; $LOG/tests.log)"
printf '%-16s %s\n' "bench_sampling" "exit $bench_rc, N = 1, 16, 64 ($LOG/bench.txt)"
sed 's/^/                 /' "$LOG/bench.txt"
printf '%-16s %s\n' "server, 8 clients" "exit $server_rc, serial against --concurrent 8 ($LOG/server.txt)"
sed 's/^/                 /' "$LOG/server.txt"
printf '%-16s %s\n' "tests + benches" "${t_run} s"
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ] && [ "$server_rc" = 0 ]
