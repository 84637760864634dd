#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; mkdir -p $OUT/p; K=$PWD/keep; cd benchmarks
OUT=$OUT/p timeout 420 python gpu_round.py --cases llama-1b:deepum:0.5 --old-src $K --warmup 12 --steps 3 --time-budget 400 2>&1 | tail -6
python -c "
import json
for r in map(json.loads, open('$OUT/p/results.jsonl')):
    if r.get('method') in ('deepum',): print(r['model'], r.get('src'), r.get('step_ms'), r.get('region_levels'), r.get('region_history'), r.get('paging_stops'), r.get('dormant'), r.get('regions'), r.get('evictions'), r.get('bytes_out'))
"
