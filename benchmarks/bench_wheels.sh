#!/usr/bin/env bash
# Make the wheels that carry DeepSpeed to the GPU machine (which cannot reach
# a package index) into .whl/ at the repository root, ignored by git.
#
# DeepSpeed is published as source. With torch installed here, DS_BUILD_OPS=0
# builds a pure-Python wheel; its CPU Adam compiles at run time on the GPU
# machine (nvcc and ninja are there). Its dependencies come as CPython 3.12
# manylinux wheels, the GPU machine's Python.
#
#   bash benchmarks/deepspeed_wheels.sh
#   # then, on the device, carry .whl and start the command with:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
mkdir -p .whl
DS_BUILD_OPS=0 python3 -m pip wheel -q --no-deps --no-build-isolation -w .whl "deepspeed==${DEEPSPEED_VERSION:-0.19.8}"
# DeepSpeed's run-time needs that the GPU machine's image lacks, and torchao (optional).
# pytest and its needs: the CUDA tests (tests/test_concurrency.py, the NCCL test) run there too.
for pkg in einops hjson msgpack ninja py-cpuinfo tqdm pydantic pydantic-core annotated-types typing-inspection typing-extensions \
    pytest pluggy iniconfig pygments torchao; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d .whl "$pkg"
done
ls -1 .whl
