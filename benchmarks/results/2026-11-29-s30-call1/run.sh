#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; mkdir -p $OUT/p $OUT/b; cd benchmarks
for k in foreach fused; do echo "== $k"; DEEPUM_BENCH_ADAMW=$k timeout 110 python oom_probe.py llama-check 0.45 9340715008 --steps 16 --deterministic --plain-first 2>&1 | tail -60; done > $OUT/oom.txt 2>&1
OUT=$OUT/p timeout 200 python gpu_round.py --cases llama-1b:deepum:0.5 --plain-peak 32637976576 --warmup 20 --steps 3 --time-budget 190 > $OUT/p.log 2>&1
OUT=$OUT/b timeout 200 python gpu_round.py --cases bert-large:deepum:0.5,t5-large:deepum:0.5 --warmup 12 --steps 3 --time-budget 190 > $OUT/b.log 2>&1
python -c "
import json,glob
for f in glob.glob('$OUT/*/results.jsonl'):
  for r in map(json.loads, open(f)):
    print(r['model'], r['method'], r.get('fraction'), r.get('median_s'), r.get('peak_device_bytes'), r.get('budget_bytes'), 'parked', r.get('step_parked_bytes'), 'dormant', r.get('dormant'), r.get('regions'), r.get('error'))
    for w in r.get('watch_windows') or []: print('   ', w)
" > $OUT/windows.txt 2>&1
tail -n 45 $OUT/oom.txt; cat $OUT/windows.txt | cut -c1-200 | tail -n 80
