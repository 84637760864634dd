#!/bin/bash
cd "$(dirname "$0")" && export PYTHONUNBUFFERED=1; B=$PWD/benchmarks
cd $B
python foreach_copy_check.py
for v in src nf/src old/src; do
PYTHONPATH=$B/../$v:$B timeout 110 python step_phases.py llama-1b 16318988288 --warmup 24 --steps 5 > $OUT/${v%%/*}.txt 2>&1; echo "== $v"; tail -13 $OUT/${v%%/*}.txt
done
