#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; mkdir -p $OUT/p; cd benchmarks
OUT=$OUT/p timeout 380 python gpu_round.py --cases llama-1b:deepum:0.5,llama-1b:ckpt,llama-1b:deepum:ckpt --warmup 20 --steps 3 --time-budget 370 2>&1 | tail -5
python -c "
import json
for r in map(json.loads, open('$OUT/p/results.jsonl')):
    print(r['model'], r['method'], r.get('median_s'), r.get('peak_device_bytes'), r.get('budget_bytes'), 'parked', r.get('step_parked_bytes'), 'lv', r.get('region_levels'), 'hist', r.get('region_history'), 'raised', r.get('region_raised'), 'stops', r.get('paging_stops'), r.get('dormant'), 'retries', r.get('step_alloc_retries'))
"
