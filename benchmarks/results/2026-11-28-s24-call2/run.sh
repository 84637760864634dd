#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; mkdir -p $OUT; cd benchmarks
for m in gpt2-medium vit-l16 bert-large llama-1b; do
  modes=plain,whole,selective,saveall; [ $m = gpt2-medium ] && modes=$modes,fused
  timeout 200 python sac_ceiling.py $m $modes 5 > $OUT/$m.log 2>&1
  tail -7 $OUT/$m.log | grep -v "^model"
done
