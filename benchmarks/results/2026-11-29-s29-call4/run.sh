#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; mkdir -p $OUT/p; cd benchmarks
for k in foreach fused; do echo "== $k"; DEEPUM_BENCH_ADAMW=$k timeout 100 python oom_probe.py llama-check 0.45 9340715008 --steps 16 --deterministic 2>&1 | tail -22; done > $OUT/oom.txt; cat $OUT/oom.txt
DEEPUM_BENCH_ADAMW=foreach OUT=$OUT/p timeout 330 python gpu_round.py --cases llama-1b:deepum:0.5 --old-src ../old/src --pairs 1 --warmup 20 --steps 3 --time-budget 320 2>&1 | tail -4
python -c "
import json
for f in ('$OUT/p/results.jsonl',):
  for r in map(json.loads, open(f)):
    print(r['model'], r['method'], r.get('src'), r.get('adamw'), r.get('median_s'), r.get('peak_device_bytes'), 'parked', r.get('step_parked_bytes'), 'goals', r.get('park_goals'), 'dormant', r.get('dormant'), r.get('regions'), 'retries', r.get('step_alloc_retries'), r.get('error'))
"
