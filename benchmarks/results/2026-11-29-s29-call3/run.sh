#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1 DEEPUM_BENCH_ADAMW=foreach; mkdir -p $OUT/p $OUT/q; cd benchmarks
OUT=$OUT/q timeout 130 python gpu_round.py --cases llama-check:identity:0.45 --steps 16 --time-budget 125 2>&1 | tail -2
OUT=$OUT/p timeout 400 python gpu_round.py --cases llama-1b:deepum:0.5 --old-src ../old/src --pairs 1 --warmup 20 --steps 3 --time-budget 390 2>&1 | tail -4
python -c "
import json
for f in ('$OUT/q/results.jsonl','$OUT/p/results.jsonl'):
  for r in map(json.loads, open(f)):
    print(r['model'], r['method'], r.get('src'), r.get('adamw'), r.get('median_s'), r.get('bit_identical'), r.get('peak_device_bytes'), 'parked', r.get('step_parked_bytes'), r.get('parked_bytes'), r.get('evictions'), 'goals', r.get('park_goals'), 'hist', r.get('region_history'), 'stepp', r.get('region_step_peaks'), 'dormant', r.get('dormant'), r.get('regions'), 'retries', r.get('step_alloc_retries'), r.get('error'))
"
