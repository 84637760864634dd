#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; mkdir -p $OUT/q $OUT/r; cd benchmarks
DEEPUM_BENCH_ADAMW=foreach OUT=$OUT/q timeout 140 python gpu_round.py --cases llama-check:identity:0.45 --steps 16 --time-budget 135 2>&1 | tail -1
DEEPUM_BENCH_ADAMW=foreach OUT=$OUT/r timeout 140 python gpu_round.py --cases llama-check:identity:0.45 --steps 16 --time-budget 135 2>&1 | tail -1
python -c "
import json
for f in ('$OUT/q/results.jsonl','$OUT/r/results.jsonl'):
  for r in map(json.loads, open(f)):
    print(r['model'], r['method'], r.get('adamw'), r.get('bit_identical'), r.get('reference_deterministic'), r.get('fits'), r.get('peak_device_bytes'), r.get('budget_bytes'), 'parked', r.get('parked_bytes'), 'ev', r.get('evictions'), 'regions', r.get('regions'), 'stops', r.get('paging_stops'), r.get('error'))
"
