#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; cd benchmarks
OUT=$OUT/a timeout 150 python gpu_round.py --cases llama-1b:deepum:0.5 --plain-peak 32637976576 --old-src ../old/src --pairs 1 --warmup 20 --steps 3 --time-budget 145 > /dev/null 2>&1
python -c "
import json,glob
for f in sorted(glob.glob('$OUT/*/results.jsonl')):
  for r in map(json.loads, open(f)):
    print(r['model'], r['method'], r.get('fraction'), r.get('src'), r.get('median_s'), r.get('times_s'), r.get('peak_device_bytes'), r.get('budget_bytes'), 'parked', r.get('step_parked_bytes'), 'goals', r.get('park_goals'), 'dormant', r.get('dormant'), r.get('regions'), 'retries', r.get('step_alloc_retries'), str(r.get('error'))[:200], r.get('skipped'))
    for w in (r.get('watch_windows') or [])[-2:]: print('   ', w)
" > $OUT/windows.txt 2>&1
cat $OUT/windows.txt | cut -c1-330
