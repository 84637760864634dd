#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; cd benchmarks
DEEPUM_BENCH_ADAMW=foreach OUT=$OUT/f timeout 330 python gpu_round.py --cases llama-1b:plain,llama-1b:deepum:0.5 --old-src ../old/src --pairs 1 --warmup 20 --steps 3 --time-budget 320 > $OUT/f.log 2>&1
OUT=$OUT/u timeout 150 python gpu_round.py --cases llama-1b:deepum:0.5 --plain-peak 32637976576 --warmup 20 --steps 3 --time-budget 140 > $OUT/u.log 2>&1
python -c "
import json,glob
for f in sorted(glob.glob('$OUT/*/results.jsonl')):
  for r in map(json.loads, open(f)):
    print(f.split('/')[-2], r['model'], r['method'], r.get('src'), r.get('adamw'), r.get('median_s'), r.get('times_s'), r.get('peak_device_bytes'), 'parked', r.get('step_parked_bytes'), 'goals', r.get('park_goals'), 'dormant', r.get('dormant'), r.get('regions'), 'retries', r.get('step_alloc_retries'), 'undone', r.get('region_undone'), r.get('error'))
    for w in (r.get('watch_windows') or [])[-8:]: print('   ', w)
" > $OUT/windows.txt 2>&1
cat $OUT/windows.txt | cut -c1-300; tail -5 $OUT/f.log
