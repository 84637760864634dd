#!/bin/bash
cd "$(dirname "$0")" && export PYTHONUNBUFFERED=1; B=$PWD/benchmarks
cd $B
PYTHONPATH=$B/../src:$B timeout 120 python step_phases.py llama-1b 16318988288 --warmup 24 --steps 5 > $OUT/new.txt 2>&1; tail -14 $OUT/new.txt
PYTHONPATH=$B/../old/src:$B timeout 120 python step_phases.py llama-1b 16318988288 --warmup 24 --steps 5 > $OUT/old.txt 2>&1; tail -14 $OUT/old.txt
PYTHONPATH=$B/../src:$B timeout 60 python step_phases.py llama-1b 0 --warmup 5 --steps 5 > $OUT/plain.txt 2>&1; tail -10 $OUT/plain.txt
