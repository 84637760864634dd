#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; mkdir -p $OUT; cd benchmarks
timeout 300 python park_probe.py llama-1b 0.5 32637976576 3 > $OUT/probe.log 2>&1; tail -45 $OUT/probe.log
