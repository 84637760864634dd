#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; cd benchmarks
L=32637976576
OUT=$OUT/a timeout 345 python gpu_round.py --cases llama-1b:deepum:0.5,llama-1b:deepum:0.533182 --plain-peak $L --old-src ../src --pairs 1 --warmup 20 --steps 3 --time-budget 340 --option th.release_rests=clean > /dev/null 2>&1
for k in 1 2; do DEEPUM_BENCH_ADAMW=foreach OUT=$OUT/i$k timeout 100 python gpu_round.py --cases llama-check:identity:0.45 --steps 16 --time-budget 95 --option th.release_rests=clean > /dev/null 2>&1; done
python -c "
import json,glob
for f in sorted(glob.glob('$OUT/*/results.jsonl')):
  for r in map(json.loads, open(f)):
    print(f.split('/')[-2], r['model'], r['method'], r.get('fraction'), r.get('src'), r.get('adamw'), r.get('median_s'), r.get('times_s'), r.get('bit_identical'), r.get('peak_device_bytes'), r.get('budget_bytes'), 'parked', r.get('step_parked_bytes') or r.get('parked_bytes'), 'goals', r.get('park_goals'), 'dormant', r.get('dormant'), r.get('regions'), 'stops', r.get('paging_stops'), 'ev', r.get('evictions'), 'ooms', r.get('dormant_ooms'), 'retries', r.get('step_alloc_retries'), str(r.get('error'))[:300], r.get('skipped'))
    for w in (r.get('watch_windows') or [])[-3:]: print('   ', w)
" > $OUT/windows.txt 2>&1
echo "== warnings" >> $OUT/windows.txt; grep -h -i "dormant\|out of memory" $OUT/i*/round.log | cut -c1-400 | head -20 >> $OUT/windows.txt
for f in $OUT/a/results.jsonl; do python park_causes.py $f >> $OUT/windows.txt 2>&1; done
cat $OUT/windows.txt | cut -c1-330
