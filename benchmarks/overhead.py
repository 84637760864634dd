"""Per-operator CPU cost of interception on CUDA, and a profile of a paged step.

    python benchmarks/overhead.py --out $OUT

Part 1 times a loop of tiny CUDA additions (so the CPU side dominates):
plain, a pass-through TorchDispatchMode, and deepum with a budget the size of
the card (nothing to page). Part 2 profiles (cProfile) ResNet-152 steps under
deepum and under lru at a third of the peak and writes the top functions
to OUT/profile-POLICY.txt.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time

import torch

import deepum

sys.path.insert(0, os.path.dirname(__file__))
import gpu_check  # noqa: E402
from opinfo_sweep import _PassThrough as PassThrough  # noqa: E402


def per_op_us(n=20000, device="cuda"):
    """Microseconds per tiny addition (the CPU side of an operator)."""
    x = torch.randn(16, device=device)
    y = torch.randn(16, device=device)
    for _ in range(100):
        torch.add(x, y)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        torch.add(x, y)
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--budget-fraction", type=float, default=0.333)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    plain = per_op_us()
    with PassThrough():
        passthrough = per_op_us()
    with deepum.oversubscribe(0.95, "cuda"):
        paged = per_op_us()
    print(f"per-op us: plain {plain:.1f}, pass-through {passthrough:.1f}, deepum (no pressure) {paged:.1f}")

    model, opt, step = gpu_check.make_case("resnet")
    for i in range(2):
        step(i)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_reserved()
    for policy in ("deepum", "lru"):
        with deepum.oversubscribe(int(peak * args.budget_fraction), "cuda", policy=policy) as s:
            for i in range(3):
                step(i)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for i in range(3):
                step(i)
            torch.cuda.synchronize()
            plain_ms = (time.perf_counter() - t0) / 3 * 1e3
            prof = cProfile.Profile()
            t0 = time.perf_counter()
            prof.enable()
            for i in range(2):
                step(i)
            torch.cuda.synchronize()
            prof.disable()
            dt = (time.perf_counter() - t0) / 2
            ops = s.stats()["ops"]
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
        with open(os.path.join(args.out, f"profile-{policy}.txt"), "w") as f:
            f.write(buf.getvalue())
        print(f"resnet {args.budget_fraction} of the peak, policy {policy}: {plain_ms:.0f} ms/step, "
              f"{dt * 1e3:.0f} ms/step under the profiler; {ops} operators in the session")
        print("\n".join(buf.getvalue().splitlines()[:30]))
        gpu_check.cleanup()

if __name__ == "__main__":
    main()
