"""Recipe capture's host time per operator, on the GPU.

    python benchmarks/record_probe.py [MODEL]

Trains the bench's MODEL (default gpt2-medium) at 1/2 of its unconstrained
peak, three steps of warm-up and three more, with ``remat.record`` wrapped in
a timer, and prints its calls and milliseconds a step (over all six) by
operator, with the longest single call: step_anatomy.py's cProfile gave
recipe capture the largest own time of a paged step, and this times it
without a profiler. Small unmanaged arguments copied into recipes
(``_Const``) are counted by shape.
"""

from __future__ import annotations

import collections
import sys
import time

import torch

import deepum.engine.intercept.register as register
import deepum.engine.remat as remat
from deepum.benchsuite.case import run_case

STEPS = 6  # warm-up and timed steps of run_case below


def main(model: str) -> None:
    stats: dict = collections.defaultdict(lambda: [0, 0.0, 0.0])
    consts: collections.Counter = collections.Counter()
    record, const_init = remat.record, remat._Const.__init__

    def timed_const(self, t):
        t0 = time.perf_counter()
        const_init(self, t)
        consts[(str(t.device), tuple(t.shape), str(t.dtype))] += 1
        consts[("seconds",)] += time.perf_counter() - t0

    def timed(func, *args, **kwargs):
        t0 = time.perf_counter()
        recipe = record(func, *args, **kwargs)
        dt = time.perf_counter() - t0
        s = stats[(str(func), recipe is not None)]
        s[0] += 1
        s[1] += dt
        s[2] = max(s[2], dt)
        return recipe

    register.record = timed
    remat._Const.__init__ = timed_const
    dev = torch.device("cuda", 0)
    plain = run_case(model, "plain", None, dev, 2, 2)
    budget = int(plain["peak_device_bytes"] * 0.5)
    stats.clear()
    consts.clear()
    row = run_case(model, "deepum", budget, dev, 3, 3)
    print(model, "median ms", round(row["median_s"] * 1e3, 1))
    calls = sum(v[0] for v in stats.values())
    seconds = sum(v[1] for v in stats.values())
    print(f"record: {calls / STEPS:.0f} calls a step, {seconds / STEPS * 1e3:.1f} ms a step")
    for (func, ok), (n, t, longest) in sorted(stats.items(), key=lambda kv: -kv[1][1])[:15]:
        print(f"  {func[:50]:50s} {'recipe' if ok else 'none':6s} {n / STEPS:7.1f}/step "
              f"{t / STEPS * 1e3:8.2f} ms/step max {longest * 1e6:8.0f} us")
    print("consts", consts.most_common(8))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "gpt2-medium")
