"""Interception cost per operator on the cpu device, with nothing to page.

    python benchmarks/per_op_cpu.py

Times 20,000 additions of two 16-float tensors (one thread, best of three):
plain, a pass-through TorchDispatchMode, and deepum with a budget far above
what the loop uses, so every operator takes the quiet path; and deepum on
the full path (execution IDs, prediction, prefetch scan) with nothing
evicted, the per-operator cost a paged step pays before any copy.
"""

import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import deepum

torch.set_num_threads(1)


class PassThrough(TorchDispatchMode):
    @classmethod
    def _should_skip_dynamo(cls):
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def loop(n=20000):
    x = torch.randn(16)
    y = torch.randn(16)
    for _ in range(200):
        torch.add(x, y)
    t0 = time.perf_counter()
    for _ in range(n):
        torch.add(x, y)
    return (time.perf_counter() - t0) / n * 1e6


def best():
    return min(loop() for _ in range(3))


if __name__ == "__main__":
    print(f"plain {best():.2f} us per operator")
    with PassThrough():
        print(f"pass-through mode {best():.2f} us")
    with deepum.oversubscribe(1 << 33, "cpu"):
        print(f"deepum, nothing to page {best():.2f} us")
    with deepum.oversubscribe(1 << 33, "cpu") as session:
        session.pager._pressure_begins()  # the full path: IDs, prediction, prefetch scan
        print(f"deepum, full path, nothing evicted {best():.2f} us")
