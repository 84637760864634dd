#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; mkdir -p $OUT/p; cd benchmarks
OUT=$OUT/p timeout 195 python gpu_round.py --cases llama-1b:deepum:0.33,llama-1b:deepum:0.5 --warmup 20 --steps 3 --time-budget 190 2>&1 | tail -4
python -c "
import json
for r in map(json.loads, open('$OUT/p/results.jsonl')):
    print(r['model'], r['method'], r.get('median_s'), r.get('peak_device_bytes'), r.get('budget_bytes'), 'parked', r.get('step_parked_bytes'), 'goals', r.get('park_goals'), 'stops', r.get('paging_stops'), r.get('dormant'), r.get('regions'), 'retries', r.get('step_alloc_retries'))
"
