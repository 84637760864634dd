#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; mkdir -p $OUT/p $OUT/q; cd benchmarks
OUT=$OUT/p timeout 250 python gpu_round.py --cases llama-1b:deepum:0.5 --old-src ../same/src --option reserve=536870912 --pairs 1 --warmup 20 --steps 3 --time-budget 240 2>&1 | tail -4
DEEPUM_BENCH_ADAMW=foreach OUT=$OUT/q timeout 300 python gpu_round.py --cases llama-1b:deepum:0.5 --old-src ../old/src --pairs 1 --warmup 20 --steps 3 --time-budget 290 2>&1 | tail -4
python -c "
import json
for f in ('$OUT/p/results.jsonl','$OUT/q/results.jsonl'):
  for r in map(json.loads, open(f)):
    print(r['model'], r['method'], r.get('src'), r.get('adamw'), r.get('median_s'), r.get('peak_device_bytes'), r.get('budget_bytes'), 'parked', r.get('step_parked_bytes'), r.get('parked_bytes'), r.get('evictions'), 'goals', r.get('park_goals'), 'stops', r.get('paging_stops'), r.get('dormant'), r.get('regions'), 'retries', r.get('step_alloc_retries'), r.get('error'))
"
