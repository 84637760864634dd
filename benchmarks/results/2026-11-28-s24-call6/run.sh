#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; mkdir -p $OUT/p; cd benchmarks
OUT=$OUT/p timeout 170 python gpu_round.py --cases gpt2-check:identity:0.6,llama-check:identity:0.6 --steps 16 --time-budget 150 2>&1 | tail -5
python -c "
import json
for r in map(json.loads, open('$OUT/p/results.jsonl')):
    if r.get('method')=='identity': print(r['model'], r.get('bit_identical'), r.get('region_history'), r.get('paging_stops'), r.get('regions'), r.get('peak_device_bytes'), r.get('budget_bytes'))
"
