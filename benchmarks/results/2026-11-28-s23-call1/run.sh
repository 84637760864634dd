#!/bin/bash
cd "$(dirname "$0")" && export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1; mkdir -p $OUT/p $OUT/q; cd benchmarks
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; python -c "import torch, transformers; print(torch.__version__, transformers.__version__)"
OUT=$OUT/p timeout 420 python gpu_round.py --cases gpt2-medium:ckpt,gpt2-medium:deepum:0.5,gpt2-medium:deepum:ckpt,bert-large:ckpt,bert-large:deepum:0.5,vit-l16:deepum:0.5,llama-1b:deepum:0.5 --warmup 12 --steps 3 --time-budget 400 2>&1 | tail -14
OUT=$OUT/q timeout 150 python gpu_round.py --cases gpt2-check:identity,llama-check:identity --warmup 3 --steps 6 --time-budget 140 2>&1 | tail -3; python -c "import json,sys; [print({k: r.get(k) for k in (\"model\",\"ok\",\"bit_identical\",\"reference_deterministic\",\"fits\",\"evictions\",\"regions\",\"regions_selective\",\"region_recomputes\",\"error\")}) for r in map(json.loads, open(\"$OUT/q/results.jsonl\"))]"
cd $OUT && tar czf all.tgz p q
