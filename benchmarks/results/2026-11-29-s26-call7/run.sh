#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; cd benchmarks
timeout 220 python park_probe.py llama-1b 0.5 32637976576 26 > $OUT/probe.log 2>&1; grep -v "^dormant" $OUT/probe.log | cut -c1-200 | head -70; tail -2 $OUT/probe.log
