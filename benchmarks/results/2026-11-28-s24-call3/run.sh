#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; mkdir -p $OUT/p; cd benchmarks
OUT=$OUT/p timeout 570 python gpu_round.py --cases gpt2-medium:ckpt,gpt2-medium:deepum:0.5,bert-large:ckpt,bert-large:deepum:0.5,vit-l16:ckpt,vit-l16:deepum:0.5 --warmup 20 --steps 3 --time-budget 540 2>&1 | tail -10
python -c "
import json
for r in map(json.loads, open('$OUT/p/results.jsonl')):
    if r.get('method') in ('deepum','identity'): print(r['model'], r['method'], r.get('region_levels'), r.get('region_history'), r.get('paging_stops'), r.get('dormant'), r.get('regions'))
"
