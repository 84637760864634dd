#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; mkdir -p $OUT/p $OUT/t; cd benchmarks
for m in plain ckpt; do timeout 60 python step_profile.py resnet152 $m --out $OUT/t > $OUT/t/$m.log 2>&1; head -1 $OUT/t/$m.log; grep "wall" $OUT/t/$m.log; done
timeout 80 python step_profile.py resnet152 deepum 6640631808 30 --out $OUT/t > $OUT/t/deepum.log 2>&1; grep "wall\|dormant" $OUT/t/deepum.log
OUT=$OUT/p timeout 330 python gpu_round.py --cases llama-1b:deepum:0.5,llama-1b:deepum:0.33 --old-src ../old/src --pairs 1 --warmup 20 --steps 3 --time-budget 325 2>&1 | tail -6
python -c "
import json
for f in ('$OUT/p/results.jsonl',):
  for r in map(json.loads, open(f)):
    print(r['model'], r['method'], r.get('median_s'), r.get('peak_device_bytes'), r.get('budget_bytes'), 'parked', r.get('step_parked_bytes'), 'goals', r.get('park_goals'), 'stops', r.get('paging_stops'), r.get('dormant'), r.get('regions'), 'retries', r.get('step_alloc_retries'))
"
