#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; cd benchmarks
O="--option th.reserve=0.0625 --option th.region_target=0.9 --option th.region_release=0.95 --option th.region_engage=0.98"
for m in bert-large t5-large gpt2-medium; do
OUT=$OUT/$m timeout 185 python gpu_round.py --cases $m:plain,$m:deepum:0.5 --old-src ../old/src --pairs 1 --warmup 12 --steps 3 --time-budget 175 $O > /dev/null 2>&1
done
python -c "
import json,glob
for f in sorted(glob.glob('$OUT/*/results.jsonl')):
  for r in map(json.loads, open(f)):
    print(f.split('/')[-2], r['model'], r['method'], r.get('src'), r.get('median_s'), r.get('times_s'), r.get('peak_device_bytes'), r.get('budget_bytes'), 'parked', r.get('step_parked_bytes') or r.get('parked_bytes'), 'dormant', r.get('dormant'), r.get('regions'), 'stops', r.get('paging_stops'), 'undone', r.get('region_undone'), 'hist', str(r.get('region_history'))[:300], str(r.get('error'))[:300], r.get('skipped'))
    for w in (r.get('watch_windows') or [])[-4:]: print('   ', w)
" > $OUT/windows.txt 2>&1
grep -h "x plain\|  [0-9]" $OUT/*/round.log | tail -20 >> $OUT/windows.txt
cat $OUT/windows.txt | cut -c1-400
