#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; mkdir -p $OUT/p; cd benchmarks
OUT=$OUT/p timeout 170 python gpu_round.py --cases gpt2-medium:deepum:0.7 --warmup 20 --steps 3 --time-budget 150 2>&1 | tail -12
python -c "
import json
for r in map(json.loads, open('$OUT/p/results.jsonl')):
    if r.get('method')=='deepum': print(r['model'], r.get('region_levels'), r.get('region_history'), r.get('region_census'), r.get('paging_stops'), r.get('dormant'))
"
cd $OUT && tar czf all.tgz p
