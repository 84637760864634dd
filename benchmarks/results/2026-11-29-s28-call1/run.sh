#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; mkdir -p $OUT/p $OUT/q; cd benchmarks
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout 100 python step_memory.py llama-1b --warmup 4 > $OUT/mem_plain.txt 2>&1; tail -30 $OUT/mem_plain.txt
timeout 150 python step_memory.py llama-1b 16318988288 --warmup 24 > $OUT/mem_half.txt 2>&1; tail -30 $OUT/mem_half.txt
OUT=$OUT/p timeout 200 python gpu_round.py --cases llama-1b:deepum:0.5 --warmup 20 --steps 3 --time-budget 195 2>&1 | tail -4
DEEPUM_BENCH_ADAMW=foreach OUT=$OUT/q timeout 200 python gpu_round.py --cases llama-1b:deepum:0.5 --warmup 20 --steps 3 --time-budget 195 2>&1 | tail -4
python -c "
import json
for f in ('$OUT/p/results.jsonl','$OUT/q/results.jsonl'):
  for r in map(json.loads, open(f)):
    print(r['model'], r['method'], r.get('adamw'), r.get('median_s'), r.get('peak_device_bytes'), r.get('budget_bytes'), 'parked', r.get('step_parked_bytes'), 'goals', r.get('park_goals'), 'stops', r.get('paging_stops'), r.get('dormant'), r.get('regions'), 'retries', r.get('step_alloc_retries'))
"
