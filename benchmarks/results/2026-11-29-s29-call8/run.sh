#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; cd benchmarks
DEEPUM_BENCH_ADAMW=foreach timeout 100 python oom_probe.py llama-check 0.45 9340715008 --steps 16 --deterministic --plain-first 2>&1 | grep -v "^step [0-9]:" > $OUT/oom.txt; cat $OUT/oom.txt
