#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; mkdir -p $OUT/p; cd benchmarks
OUT=$OUT/p timeout 480 python gpu_round.py --cases gpt2-medium:deepum:0.5,llama-1b:deepum:0.33,t5-large:deepum:0.5 --warmup 20 --steps 3 --time-budget 470 2>&1 | tail -7
python -c "
import json
for r in map(json.loads, open('$OUT/p/results.jsonl')):
    print(r['model'], r['method'], r.get('median_s'), r.get('peak_device_bytes'), r.get('budget_bytes'), 'parked', r.get('step_parked_bytes'), 'lv', r.get('region_levels'), 'hist', r.get('region_history'), 'raised', r.get('region_raised'), 'stops', r.get('paging_stops'), r.get('dormant'), 'retries', r.get('step_alloc_retries'), 'moved', r.get('step_bytes_to_device'), r.get('step_bytes_to_host'))
"
