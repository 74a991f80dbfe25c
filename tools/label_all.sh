#!/usr/bin/env bash
# The issue-19 label generation queue, in order of value per CPU-hour; every step resumes where it
# stopped (rows are appended, done keys skipped), so rerunning this script continues the queue.
#   CPU, shared:  EDGETTS_THREADS=1 nohup bash tools/label_all.sh > runs/labels/queue.log 2>&1 &
#   CUDA build:   GPU_LAYERS=99 bash tools/label_all.sh     (all of it in minutes, not hours)
# Sizes: EVAL_MAWPS / EVAL_GSM8K problems of N = 16 held-out samples (the bench's first ones),
# PRMBENCH_FIRST PRMBench-train prefills and the dev/test splits between them, then every other
# PRMBench-train prefill, then OUTCOME_LIMIT GSM8K-train problems x 8, MAWPS_TRAIN_LIMIT MAWPS
# problems after the eval set x 8, then MC rollouts.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/labels}
G=(--n-gpu-layers "${GPU_LAYERS:-0}")
L=(tools/label_steps.py)
$PY "${L[@]}" sample --data "$DATA/mawps.jsonl" --out "$OUT/mawps" -n 16 --limit "${EVAL_MAWPS:-30}" "${G[@]}"
# A first share of PRMBench before the GSM8K eval set, so a short session has data to train on.
$PY "${L[@]}" prmbench --data "$DATA"/prmbench_train/*.jsonl --split train --layers 6 12 18 -1 \
    --out "$OUT/prmbench_train" --limit "${PRMBENCH_FIRST:-400}" "${G[@]}"
# The held-out step judges (train_verifier.py --step-dev / --step-test): other PRMBench problems.
for split in dev test; do
  $PY "${L[@]}" prmbench --data "$DATA"/prmbench_train/*.jsonl --split $split --layers 6 12 18 -1 \
      --out "$OUT/prmbench_$split" "${G[@]}"
done
$PY "${L[@]}" sample --data "$DATA/gsm8k_test.jsonl" --out "$OUT/gsm8k_test" -n 16 --limit "${EVAL_GSM8K:-20}" "${G[@]}"
$PY "${L[@]}" prmbench --data "$DATA"/prmbench_train/*.jsonl --split train --layers 6 12 18 -1 \
    --out "$OUT/prmbench_train" "${G[@]}"
$PY "${L[@]}" sample --data "$DATA/gsm8k_train.jsonl" --out "$OUT/gsm8k_train" -n 8 --offset 200 \
    --limit "${OUTCOME_LIMIT:-400}" "${G[@]}"
# MAWPS-style outcome labels: MAWPS after the bench's first 100 (the eval set), near-copies of
# those 100 skipped (label_steps.near_copies); its own directory, so the two queues never share one.
$PY "${L[@]}" sample --data "$DATA/mawps.jsonl" --out "$OUT/mawps_train" -n 8 --offset 100 \
    --limit "${MAWPS_TRAIN_LIMIT:-400}" --held-out "$DATA/mawps.jsonl:100" "${G[@]}"
$PY "${L[@]}" rollout --samples "$OUT/gsm8k_train" --data "$DATA/gsm8k_train.jsonl" \
    --out "$OUT/gsm8k_train_mc" -k 4 --limit "${ROLLOUT_LIMIT:-100}" "${G[@]}"
