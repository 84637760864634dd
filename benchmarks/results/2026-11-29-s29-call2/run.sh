#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; mkdir -p $OUT/p $OUT/q; cd benchmarks
timeout 150 python step_blocks.py llama-1b 16318988288 --warmup 24 --steps 2 > $OUT/blocks.txt 2>&1; tail -30 $OUT/blocks.txt
OUT=$OUT/p timeout 240 python gpu_round.py --cases llama-1b:deepum:0.5 --old-src ../same/src --option th.region_target=0.92 --pairs 1 --warmup 20 --steps 3 --time-budget 230 2>&1 | tail -4
OUT=$OUT/q timeout 120 python gpu_round.py --plain-peak 32637976576 --cases llama-1b:deepum:0.5 --option th.region_target=0.92 --option th.flush_windows=1000 --warmup 20 --steps 3 --time-budget 110 2>&1 | tail -2
python -c "
import json
for f in ('$OUT/p/results.jsonl','$OUT/q/results.jsonl'):
  for r in map(json.loads, open(f)):
    print(r['model'], r['method'], r.get('src'), r.get('median_s'), r.get('steps_s'), r.get('peak_device_bytes'), 'parked', r.get('step_parked_bytes'), 'goals', r.get('park_goals'), 'hist', r.get('region_history'), 'dormant', r.get('dormant'), r.get('regions'), 'retries', r.get('step_alloc_retries'), r.get('error'))
"
