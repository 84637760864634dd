"""A trace and a memory picture of GPT-2 medium at half its peak, on the GPU.

    python benchmarks/gpu_trace.py --out $OUT      # writes gpt2_memory.png, gpt2_trace.json

Same model and step as benchmarks/gpu_check.py (batch 16 x 1024, bf16
autocast, fused AdamW). The budget is half the peak reserved memory of two
unconstrained steps; the trace covers the last two of four paged steps.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import deepum

sys.path.insert(0, os.path.dirname(__file__))
import gpu_check  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--fraction", type=float, default=0.5)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    model, opt, step = gpu_check.make_case("gpt2")
    for i in range(2):
        step(i)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_reserved()
    budget = int(peak * args.fraction)
    with deepum.oversubscribe(budget, "cuda", trace=True) as session:
        for i in range(2):
            step(i)
        torch.cuda.synchronize()
        recorder = session.pager.trace
        # Keep the steady state only: forget the warm-up steps' events.
        recorder.slices.clear()
        recorder.counters.clear()
        recorder.marks.clear()
        recorder.t0 = time.perf_counter_ns() / 1000.0
        for i in range(2):
            step(i)
        torch.cuda.synchronize()
    png = os.path.join(args.out, "gpt2_memory.png")
    session.plot_memory(png, title=f"GPT-2 medium, batch 16x1024, budget {budget / 2**30:.1f} GiB "
                                   f"(half of {peak / 2**30:.1f} GiB), {torch.cuda.get_device_name()}")
    session.export_trace(os.path.join(args.out, "gpt2_trace.json"))
    st = session.stats()
    print(f"budget {budget / 2**30:.2f} GiB, peak reserved {st['peak_device_bytes'] / 2**30:.2f} GiB; "
          f"{len(recorder.slices)} slices, {len(recorder.counters)} samples")


if __name__ == "__main__":
    main()
