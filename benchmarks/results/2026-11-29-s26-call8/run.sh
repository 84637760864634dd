#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; mkdir -p $OUT/p; cd benchmarks
timeout 95 python park_probe.py llama-1b 0.5 32637976576 26 > $OUT/probe.log 2>&1; grep "peak\|goal" $OUT/probe.log | cut -c1-190 | head -24; tail -1 $OUT/probe.log | cut -c1-200
OUT=$OUT/p timeout 150 python gpu_round.py --cases llama-1b:deepum:0.5 --warmup 20 --steps 3 --time-budget 145 2>&1 | tail -3
python -c "
import json
for r in map(json.loads, open('$OUT/p/results.jsonl')):
    print(r['model'], r['method'], r.get('median_s'), r.get('peak_device_bytes'), r.get('budget_bytes'), 'parked', r.get('step_parked_bytes'), 'stops', r.get('paging_stops'), r.get('dormant'), 'retries', r.get('step_alloc_retries'), 'hist', r.get('region_history'))
"
