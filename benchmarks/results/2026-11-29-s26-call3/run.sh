#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; mkdir -p $OUT/p; cd benchmarks
OUT=$OUT/p timeout 440 python gpu_round.py --cases gpt2-medium:deepum:0.5,vit-l16:deepum:0.5,bert-large:deepum:0.5 --warmup 20 --steps 3 --time-budget 430 2>&1 | tail -7
python -c "
import json
for r in map(json.loads, open('$OUT/p/results.jsonl')):
    print(r['model'], r['method'], r.get('median_s'), r.get('peak_device_bytes'), r.get('budget_bytes'), 'parked', r.get('step_parked_bytes'), 'lv', r.get('region_levels'), 'hist', r.get('region_history'), 'stops', r.get('paging_stops'), r.get('dormant'), 'retries', r.get('step_alloc_retries'))
"
