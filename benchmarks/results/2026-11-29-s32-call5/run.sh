#!/bin/bash
# Same-call pairs the last call's time budgets skipped: regions with autocast's cast cache off (new) against a112e90 (old).
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; cd benchmarks
P="--old-src ../old/src --pairs 1 --steps 3 --warmup 12"
(CUDA_VISIBLE_DEVICES=0 OUT=$OUT/g0 timeout 232 python gpu_round.py --cases llama-1b:deepum:0.5 --plain-peak 32637976576 --old-src ../old/src --pairs 1 --steps 3 --warmup 20 --time-budget 230 > /dev/null 2>&1) &
(CUDA_VISIBLE_DEVICES=1 OUT=$OUT/g1 timeout 232 python gpu_round.py --cases t5-large:deepum:0.5 --plain-peak 38354812928 $P --time-budget 230 > /dev/null 2>&1) &
wait
python -c "
import json,glob
for f in sorted(glob.glob('$OUT/*/results.jsonl')):
  for r in map(json.loads, open(f)):
    print(f.split('/')[-2], r['model'], r['method'], r.get('fraction'), r.get('src'), r.get('median_s'), r.get('times_s'), r.get('peak_device_bytes'), r.get('budget_bytes'), 'parked', r.get('step_parked_bytes'), 'goals', r.get('park_goals'), 'dormant', r.get('dormant'), r.get('regions'), 'stops', r.get('paging_stops'), 'retries', r.get('step_alloc_retries'), str(r.get('error'))[:300], r.get('skipped'))
" > $OUT/windows.txt 2>&1
grep -h "^===" $OUT/g*/round.log >> $OUT/windows.txt
cat $OUT/windows.txt | cut -c1-300
