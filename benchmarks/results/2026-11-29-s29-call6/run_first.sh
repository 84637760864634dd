#!/bin/bash
# call 6 as it ran (benchmarks/oom_probe.py before its segments() listing)
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; cd benchmarks
for k in 1 2; do echo "== foreach run $k"; DEEPUM_BENCH_ADAMW=foreach timeout 140 python oom_probe.py llama-check 0.45 9340715008 --steps 16 --deterministic --plain-first 2>&1 | tail -9; done > $OUT/oom.txt; cat $OUT/oom.txt
