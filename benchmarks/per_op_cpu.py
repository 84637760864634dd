"""Interception cost per operator on the cpu device.

    python benchmarks/per_op_cpu.py

Times 20,000 additions of two 16-float tensors (one thread, best of three;
the loop of benchmarks/overhead.py on the host): plain, a pass-through
TorchDispatchMode, deepum with a budget far above what the loop uses (every
operator takes the quiet path), and deepum on the full path (execution IDs,
prediction, prefetch scan) with nothing evicted, the per-operator cost a
paged step pays before any copy.
"""

import os
import sys

import torch

import deepum

sys.path.insert(0, os.path.dirname(__file__))
from overhead import PassThrough, per_op_us  # noqa: E402

torch.set_num_threads(1)


def best():
    return min(per_op_us(device="cpu") for _ in range(3))


if __name__ == "__main__":
    print(f"plain {best():.2f} us per operator")
    with PassThrough():
        print(f"pass-through mode {best():.2f} us")
    with deepum.oversubscribe(1 << 33, "cpu"):
        print(f"deepum, nothing to page {best():.2f} us")
    with deepum.oversubscribe(1 << 33, "cpu") as session:
        session.pager._pressure_begins()  # the full path: IDs, prediction, prefetch scan
        print(f"deepum, full path, nothing evicted {best():.2f} us")
