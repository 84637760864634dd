#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; cd benchmarks
for k in 1 2; do DEEPUM_BENCH_ADAMW=foreach OUT=$OUT/i$k timeout 110 python gpu_round.py --cases llama-check:identity:0.45 --steps 16 --time-budget 100 > /dev/null 2>&1; done
python -c "
import json,glob
for f in sorted(glob.glob('$OUT/*/results.jsonl')):
  for r in map(json.loads, open(f)):
    print(f.split('/')[-2], r['model'], r['method'], r.get('adamw'), r.get('bit_identical'), r.get('peak_device_bytes'), r.get('budget_bytes'), 'parked', r.get('parked_bytes'), 'regions', r.get('regions'), 'stops', r.get('paging_stops'), 'ev', r.get('evictions'), r.get('error'))
" > $OUT/identity.txt 2>&1; cat $OUT/identity.txt
