#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; mkdir -p $OUT/p $OUT/q $OUT/r; cd benchmarks
OUT=$OUT/p timeout 200 python gpu_round.py --cases llama-1b:deepum:0.5 --old-src ../old/src --pairs 1 --warmup 20 --steps 3 --time-budget 195 2>&1 | tail -4
OUT=$OUT/q timeout 100 python gpu_round.py --cases llama-check:identity:0.45 --steps 16 --time-budget 95 2>&1 | tail -2
OUT=$OUT/r timeout 200 python gpu_round.py --cases resnet152:ckpt,resnet152:deepum:0.5,t5-large:deepum:0.5 --warmup 20 --steps 8 --time-budget 195 2>&1 | tail -6
python -c "
import json
for f in ('$OUT/p/results.jsonl','$OUT/q/results.jsonl','$OUT/r/results.jsonl'):
  for r in map(json.loads, open(f)):
    print(r['model'], r['method'], r.get('median_s'), r.get('times_s'), r.get('bit_identical'), r.get('peak_device_bytes'), r.get('budget_bytes'), 'parked', r.get('step_parked_bytes'), r.get('parked_bytes'), 'goals', r.get('park_goals'), 'raised', r.get('region_raised'), r.get('region_undone'), 'stops', r.get('paging_stops'), r.get('dormant'), r.get('regions'), 'retries', r.get('step_alloc_retries'))
"
