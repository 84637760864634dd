#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; cd benchmarks
for k in 1 2; do DEEPUM_BENCH_ADAMW=foreach OUT=$OUT/i$k timeout 120 python gpu_round.py --cases llama-check:identity:0.45 --steps 16 --time-budget 110 > $OUT/i$k.log 2>&1; done
OUT=$OUT/p timeout 150 python gpu_round.py --cases llama-1b:deepum:0.5 --plain-peak 32637976576 --warmup 20 --steps 3 --time-budget 140 > $OUT/p.log 2>&1
OUT=$OUT/b timeout 80 python gpu_round.py --cases bert-large:deepum:0.5 --plain-peak 28573696000 --warmup 12 --steps 3 --time-budget 70 > $OUT/b.log 2>&1
OUT=$OUT/t timeout 110 python gpu_round.py --cases t5-large:deepum:0.5 --plain-peak 38354812928 --warmup 12 --steps 3 --time-budget 100 > $OUT/t.log 2>&1
python -c "
import json,glob
for f in sorted(glob.glob('$OUT/*/results.jsonl')):
  for r in map(json.loads, open(f)):
    print(f.split('/')[-2], r['model'], r['method'], r.get('adamw'), r.get('median_s'), r.get('bit_identical'), r.get('peak_device_bytes'), r.get('budget_bytes'), 'parked', r.get('step_parked_bytes') or r.get('parked_bytes'), 'dormant', r.get('dormant'), r.get('regions'), 'stops', r.get('paging_stops'), 'ev', r.get('evictions'), r.get('error'))
    for w in (r.get('watch_windows') or [])[:16]: print('   ', w)
" > $OUT/windows.txt 2>&1
cat $OUT/windows.txt | cut -c1-250; grep -h -i "error\|Traceback" $OUT/*.log | head
