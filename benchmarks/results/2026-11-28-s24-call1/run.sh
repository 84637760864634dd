#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; mkdir -p $OUT/p; cd benchmarks
OUT=$OUT/p timeout 560 python gpu_round.py --cases gpt2-check:identity:0.6,llama-check:identity:0.6,gpt2-medium:deepum:0.5,vit-l16:deepum:0.5,bert-large:deepum:0.5 --warmup 20 --steps 3 --time-budget 540 2>&1 | tail -16
python -c "
import json
for r in map(json.loads, open('$OUT/p/results.jsonl')):
    if r.get('method') in ('deepum','identity'): print(r['model'], r['method'], r.get('identical'), r.get('region_levels'), r.get('region_history'), r.get('paging_stops'), r.get('dormant'), r.get('regions_selective'))
"
cd $OUT && tar czf all.tgz p
