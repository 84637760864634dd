"""Interception cost per operator on the cpu device.

    python benchmarks/per_op_cpu.py

Times 20,000 additions of two 16-float tensors (one thread, best of three;
the loop of benchmarks/overhead.py on the host): plain, a pass-through
TorchDispatchMode, deepum with a budget far above what the loop uses (every
operator takes the quiet path), and deepum on the full path (execution IDs,
prediction, prefetch scan) with nothing evicted, the per-operator cost a
paged step pays before any copy. Each row also counts the Python and C
function calls per operator, which other jobs on a shared machine do not
move (the times there can move by a third).
"""

import os
import sys
import threading

import torch

import deepum

sys.path.insert(0, os.path.dirname(__file__))
from overhead import PassThrough, per_op_us  # noqa: E402

torch.set_num_threads(1)


def best():
    return min(per_op_us(device="cpu") for _ in range(3))


def calls_per_op(n: int = 2000) -> float:
    """Python and C function calls made per operator: a count that no other job on a
    shared machine moves, to set beside the times (the loop's own calls included)."""
    x, y = torch.randn(16), torch.randn(16)
    for _ in range(100):
        torch.add(x, y)
    count = [0]

    def profile(frame, event, arg):
        if event in ("call", "c_call"):
            count[0] += 1

    threading.setprofile(None)
    sys.setprofile(profile)
    try:
        for _ in range(n):
            torch.add(x, y)
    finally:
        sys.setprofile(None)
    return count[0] / n


def row(name: str) -> None:
    print(f"{name} {best():.2f} us per operator, {calls_per_op():.0f} calls")


if __name__ == "__main__":
    row("plain")
    with PassThrough():
        row("pass-through mode")
    with deepum.oversubscribe(1 << 33, "cpu"):
        row("deepum, nothing to page")
    with deepum.oversubscribe(1 << 33, "cpu") as session:
        session.pager._pressure_begins()  # the full path: IDs, prediction, prefetch scan
        row("deepum, full path, nothing evicted")
