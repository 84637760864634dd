#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; cd benchmarks
for k in 1 2; do DEEPUM_BENCH_ADAMW=foreach OUT=$OUT/i$k timeout 115 python gpu_round.py --cases llama-check:identity:0.45 --steps 16 --time-budget 105 > /dev/null 2>&1; done
OUT=$OUT/u timeout 300 python gpu_round.py --cases llama-1b:plain,llama-1b:deepum:0.5 --old-src ../old/src --pairs 1 --warmup 20 --steps 3 --time-budget 290 --option th.reserve=0.0625 --option th.region_target=0.9 --option th.region_release=0.95 --option th.region_engage=0.98 > $OUT/u.log 2>&1
python -c "
import json,glob
for f in sorted(glob.glob('$OUT/*/results.jsonl')):
  for r in map(json.loads, open(f)):
    print(f.split('/')[-2], r['model'], r['method'], r.get('src'), r.get('adamw'), r.get('median_s'), r.get('times_s'), r.get('bit_identical'), r.get('peak_device_bytes'), r.get('budget_bytes'), 'parked', r.get('step_parked_bytes') or r.get('parked_bytes'), 'goals', r.get('park_goals'), 'dormant', r.get('dormant'), r.get('regions'), 'stops', r.get('paging_stops'), 'ev', r.get('evictions'), 'ooms', r.get('dormant_ooms'), 'undone', r.get('region_undone'), str(r.get('error'))[:400])
    for w in (r.get('watch_windows') or [])[-6:]: print('   ', w)
" > $OUT/windows.txt 2>&1
echo "== warnings" >> $OUT/windows.txt; grep -h -i "dormant\|out of memory" $OUT/i*/round.log | cut -c1-400 | head -20 >> $OUT/windows.txt
cat $OUT/u.log >> $OUT/windows.txt; rm $OUT/u.log
cat $OUT/windows.txt | cut -c1-300
