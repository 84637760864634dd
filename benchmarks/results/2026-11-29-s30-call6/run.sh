#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; cd benchmarks
for k in 1 2; do echo "== run $k"; DEEPUM_BENCH_ADAMW=foreach timeout 80 python oom_probe.py llama-check 0.45 9340715008 --steps 14 --deterministic 2>&1 | grep -v "^  [0-9]* segments\|^at the" | cut -c1-260; done > $OUT/probe.txt 2>&1; cat $OUT/probe.txt
