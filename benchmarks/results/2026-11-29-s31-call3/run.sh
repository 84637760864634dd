#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; cd benchmarks
L=32637976576; G=52892270592
OUT=$OUT/r timeout 135 python gpu_round.py --cases llama-1b:deepum:0.5 --plain-peak $L --old-src ../old/src --pairs 1 --warmup 20 --steps 3 --time-budget 130 > /dev/null 2>&1
OUT=$OUT/r timeout 130 python gpu_round.py --cases gpt2-medium:deepum:0.5 --plain-peak $G --old-src ../old/src --pairs 1 --warmup 12 --steps 3 --time-budget 125 > /dev/null 2>&1
OUT=$OUT/o timeout 70 python gpu_round.py --cases llama-1b:deepum:0.5 --plain-peak $L --warmup 20 --steps 3 --time-budget 65 --option th.region_release=0.95 --option th.region_engage=0.98 > /dev/null 2>&1
OUT=$OUT/r timeout 215 python gpu_round.py --cases llama-1b:plain,llama-1b:ckpt,llama-1b:deepum:ckpt --warmup 20 --steps 3 --time-budget 210 > /dev/null 2>&1
python -c "
import json,glob
for f in sorted(glob.glob('$OUT/*/results.jsonl')):
  for r in map(json.loads, open(f)):
    print(f.split('/')[-2], r['model'], r['method'], r.get('fraction'), r.get('src'), r.get('median_s'), r.get('times_s'), r.get('peak_device_bytes'), r.get('budget_bytes'), 'parked', r.get('step_parked_bytes') or r.get('parked_bytes'), 'goals', r.get('park_goals'), 'dormant', r.get('dormant'), r.get('regions'), 'stops', r.get('paging_stops'), 'undone', r.get('region_undone'), 'retries', r.get('step_alloc_retries'), str(r.get('error'))[:300], r.get('skipped'))
    for w in (r.get('watch_windows') or [])[-3:]: print('   ', w)
" > $OUT/windows.txt 2>&1
cat $OUT/windows.txt | cut -c1-330
