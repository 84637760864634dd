#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; mkdir -p $OUT/p $OUT/q; cd benchmarks
OUT=$OUT/p timeout 170 python gpu_round.py --cases llama-1b:deepum:0.5 --warmup 20 --steps 3 --time-budget 160 2>&1 | tail -3
OUT=$OUT/q timeout 230 python gpu_round.py --cases llama-check:identity:0.45,gpt2-check:identity:0.6 --steps 16 --time-budget 220 2>&1 | tail -4
python -c "
import json
for f in ('$OUT/p/results.jsonl','$OUT/q/results.jsonl'):
  for r in map(json.loads, open(f)):
    print(r['model'], r['method'], r.get('median_s'), r.get('bit_identical'), r.get('peak_device_bytes'), r.get('budget_bytes'), 'parked', r.get('step_parked_bytes'), r.get('parked_bytes'), 'lv', r.get('region_levels'), 'hist', r.get('region_history'), 'stops', r.get('paging_stops'), r.get('dormant'), r.get('regions'), 'retries', r.get('step_alloc_retries'), 'moved', r.get('step_bytes_to_device'), r.get('step_bytes_to_host'))
"
timeout 140 python park_probe.py llama-1b 0.5 32637976576 24 > $OUT/probe.log 2>&1; tail -60 $OUT/probe.log
