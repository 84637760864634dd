#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; mkdir -p $OUT/p $OUT/q; cd benchmarks
OUT=$OUT/p timeout 230 python gpu_round.py --cases resnet152:deepum:0.5,resnet152:ckpt --warmup 20 --steps 3 --time-budget 220 2>&1 | tail -4
OUT=$OUT/q timeout 140 python gpu_round.py --cases gpt2-check:identity:0.6 --steps 16 --time-budget 130 2>&1 | tail -3
python -c "
import json
for f in ('$OUT/p/results.jsonl','$OUT/q/results.jsonl'):
  for r in map(json.loads, open(f)):
    print(r['model'], r['method'], r.get('median_s'), r.get('bit_identical'), r.get('peak_device_bytes'), r.get('budget_bytes'), 'parked', r.get('step_parked_bytes'), r.get('parked_bytes'), 'lv', r.get('region_levels'), 'hist', r.get('region_history'), 'raised', r.get('region_raised'), 'stops', r.get('paging_stops'), r.get('dormant'), r.get('regions'), 'retries', r.get('step_alloc_retries'))
"
