#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; mkdir -p $OUT/p $OUT/q; cd benchmarks
OUT=$OUT/p timeout 250 python gpu_round.py --cases llama-1b:deepum:0.5 --old-src ../old/src --pairs 1 --warmup 20 --steps 3 --time-budget 245 2>&1 | tail -4
OUT=$OUT/q timeout 260 python gpu_round.py --cases gpt2-medium:deepum:0.5,vit-l16:deepum:0.5,bert-large:deepum:0.5 --warmup 20 --steps 3 --time-budget 255 2>&1 | tail -6
python -c "
import json
for f in ('$OUT/p/results.jsonl','$OUT/q/results.jsonl'):
  for r in map(json.loads, open(f)):
    print(r['model'], r['method'], r.get('median_s'), r.get('peak_device_bytes'), r.get('budget_bytes'), 'parked', r.get('step_parked_bytes'), 'goals', r.get('park_goals'), 'hist', r.get('region_history'), 'raised', r.get('region_raised'), r.get('region_undone'), 'stops', r.get('paging_stops'), r.get('dormant'), r.get('regions'), 'retries', r.get('step_alloc_retries'))
"
