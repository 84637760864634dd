#!/bin/bash
# Two GPUs, one process at a time on each: option B (region shares 0.95/0.98) against the default on every family at 1/2.
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; cd benchmarks
B="--option th.region_release=0.95 --option th.region_engage=0.98"
P="--old-src ../src --pairs 1 --steps 3"
g0() {
  export CUDA_VISIBLE_DEVICES=0 OUT=$OUT/g0
  timeout 110 python gpu_round.py --cases bert-large:deepum:0.5 --plain-peak 28573696000 $P --warmup 12 --time-budget 105 $B
  timeout 110 python gpu_round.py --cases vit-l16:deepum:0.5 --plain-peak 27789361152 $P --warmup 12 --time-budget 105 $B
  timeout 140 python gpu_round.py --cases t5-large:deepum:0.5 --plain-peak 38354812928 $P --warmup 12 --time-budget 135 $B
  timeout 140 python gpu_round.py --cases resnet152:deepum:0.5 --plain-peak 13281263616 $P --warmup 12 --time-budget 135 $B
}
g1() {
  export CUDA_VISIBLE_DEVICES=1 OUT=$OUT/g1
  timeout 130 python gpu_round.py --cases gpt2-medium:deepum:0.5 --plain-peak 52892270592 $P --warmup 12 --time-budget 125 $B
  timeout 180 python gpu_round.py --cases llama-1b:deepum:0.5 --plain-peak 32637976576 $P --warmup 20 --time-budget 175 $B --option th.release_rests=clean
  timeout 180 python gpu_round.py --cases llama-1b:deepum:0.533182 --plain-peak 32637976576 $P --warmup 20 --time-budget 175 $B --option th.release_rests=clean
}
g0 > /dev/null 2>&1 &
g1 > /dev/null 2>&1 &
wait
python -c "
import json,glob
for f in sorted(glob.glob('$OUT/*/results.jsonl')):
  for r in map(json.loads, open(f)):
    print(f.split('/')[-2], r['model'], r['method'], r.get('fraction'), r.get('src'), r.get('median_s'), r.get('times_s'), r.get('peak_device_bytes'), r.get('budget_bytes'), 'parked', r.get('step_parked_bytes') or r.get('parked_bytes'), 'goals', r.get('park_goals'), 'dormant', r.get('dormant'), r.get('regions'), 'stops', r.get('paging_stops'), 'undone', r.get('region_undone'), 'retries', r.get('step_alloc_retries'), 'hist', str(r.get('region_history'))[:200], str(r.get('error'))[:300], r.get('skipped'))
    for w in (r.get('watch_windows') or [])[-3:]: print('   ', w)
" > $OUT/windows.txt 2>&1
for f in $OUT/g1/results.jsonl; do python park_causes.py $f >> $OUT/windows.txt 2>&1; done
grep -h "^===" $OUT/g*/round.log >> $OUT/windows.txt
cat $OUT/windows.txt | cut -c1-300
