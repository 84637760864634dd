#!/bin/bash
# Regions with autocast's cast cache off (new) against a112e90 (old), same call; two GPUs, one case at a time on each.
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; cd benchmarks
L=32637976576
P="--old-src ../old/src --pairs 1 --steps 3"
g0() {
  export CUDA_VISIBLE_DEVICES=0 OUT=$OUT/g0
  timeout 170 python gpu_round.py --cases llama-1b:deepum:0.5 --plain-peak $L $P --warmup 20 --time-budget 165
  timeout 125 python gpu_round.py --cases llama-1b:deepum:0.533182 --plain-peak $L $P --warmup 20 --time-budget 120
  timeout 90 python gpu_round.py --cases vit-l16:deepum:0.5 --plain-peak 27789361152 $P --warmup 12 --time-budget 85
  timeout 100 python gpu_round.py --cases llama-check:identity --steps 16 --time-budget 95
}
g1() {
  export CUDA_VISIBLE_DEVICES=1 OUT=$OUT/g1
  timeout 165 python gpu_round.py --cases gpt2-medium:deepum:0.5 --plain-peak 52892270592 $P --warmup 12 --time-budget 160
  timeout 135 python gpu_round.py --cases bert-large:deepum:0.5 --plain-peak 28573696000 $P --warmup 12 --time-budget 130
  timeout 185 python gpu_round.py --cases t5-large:deepum:0.5 --plain-peak 38354812928 $P --warmup 12 --time-budget 180
}
g0 > /dev/null 2>&1 &
g1 > /dev/null 2>&1 &
wait
python -c "
import json,glob
for f in sorted(glob.glob('$OUT/*/results.jsonl')):
  for r in map(json.loads, open(f)):
    print(f.split('/')[-2], r['model'], r['method'], r.get('fraction'), r.get('src'), r.get('median_s'), r.get('times_s'), r.get('bit_identical'), r.get('peak_device_bytes'), r.get('budget_bytes'), 'parked', r.get('step_parked_bytes'), 'goals', r.get('park_goals'), 'dormant', r.get('dormant'), r.get('regions'), 'stops', r.get('paging_stops'), 'ev', r.get('evictions'), 'retries', r.get('step_alloc_retries'), 'hist', str(r.get('region_history'))[:160], str(r.get('error'))[:300], r.get('skipped'))
    for w in (r.get('watch_windows') or [])[-2:]: print('   ', w)
" > $OUT/windows.txt 2>&1
grep -h "^===" $OUT/g*/round.log >> $OUT/windows.txt
cat $OUT/windows.txt | cut -c1-300
