#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; mkdir -p $OUT/p; cd benchmarks
OUT=$OUT/p timeout 330 python gpu_round.py --cases llama-1b:ckpt,llama-1b:deepum:ckpt,llama-1b:deepum:0.33 --warmup 20 --steps 3 --time-budget 325 2>&1 | tail -5
python -c "
import json
for f in ('$OUT/p/results.jsonl',):
  for r in map(json.loads, open(f)):
    print(r['model'], r['method'], r.get('median_s'), r.get('times_s'), r.get('peak_device_bytes'), r.get('budget_bytes'), 'parked', r.get('step_parked_bytes'), 'goals', r.get('park_goals'), 'stops', r.get('paging_stops'), r.get('dormant'), r.get('regions'), 'retries', r.get('step_alloc_retries'))
"
