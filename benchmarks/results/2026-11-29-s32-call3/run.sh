#!/bin/bash
# Where deepum stands at HEAD, every family on one machine: plain, checkpointing and deepum at 1/2 (two GPUs, one case at a time on each).
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; cd benchmarks
g0() {
  export CUDA_VISIBLE_DEVICES=0 OUT=$OUT/g0
  timeout 150 python gpu_round.py --cases bert-large:plain,bert-large:ckpt,bert-large:deepum:0.5 --warmup 12 --steps 3 --time-budget 148
  timeout 120 python gpu_round.py --cases vit-l16:plain,vit-l16:ckpt,vit-l16:deepum:0.5 --warmup 12 --steps 3 --time-budget 118
  timeout 100 python gpu_round.py --cases resnet152:plain,resnet152:ckpt,resnet152:deepum:0.5 --warmup 12 --steps 5 --time-budget 98
  timeout 150 python gpu_round.py --cases t5-large:plain,t5-large:deepum:0.5 --warmup 12 --steps 3 --time-budget 148
}
g1() {
  export CUDA_VISIBLE_DEVICES=1 OUT=$OUT/g1
  timeout 190 python gpu_round.py --cases gpt2-medium:plain,gpt2-medium:ckpt,gpt2-medium:deepum:0.5 --warmup 12 --steps 3 --time-budget 188
  timeout 300 python gpu_round.py --cases llama-1b:plain,llama-1b:ckpt,llama-1b:deepum:0.5,llama-1b:deepum:ckpt --warmup 20 --steps 3 --time-budget 298
}
g0 > /dev/null 2>&1 &
g1 > /dev/null 2>&1 &
wait
python -c "
import json,glob
for f in sorted(glob.glob('$OUT/*/results.jsonl')):
  for r in map(json.loads, open(f)):
    print(f.split('/')[-2], r['model'], r['method'], r.get('fraction'), r.get('median_s'), r.get('times_s'), r.get('peak_device_bytes'), r.get('budget_bytes'), 'parked', r.get('step_parked_bytes'), 'dormant', r.get('dormant'), r.get('regions'), 'stops', r.get('paging_stops'), 'retries', r.get('step_alloc_retries'), str(r.get('error'))[:300], r.get('skipped'))
" > $OUT/windows.txt 2>&1
grep -h "^===" $OUT/g*/round.log >> $OUT/windows.txt
cat $OUT/windows.txt | cut -c1-260
