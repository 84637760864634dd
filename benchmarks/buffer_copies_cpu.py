"""Host time of copying a region's small buffers: one clone each against views of one concatenation.

    python benchmarks/buffer_copies_cpu.py

The eight float buffers of four BatchNorms (64, 64, 256 and 256 channels),
one thread, median of 3000 calls each: a clone per buffer (what a region's
recompute does, engine/regions.py's ``_Recompute``) against one ``torch.cat``
cut into views by ``split`` (the alternative tried in session 27).
"""

import statistics
import time

import torch
from torch import nn


def per_call_us(fn, n: int = 3000) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main() -> None:
    torch.set_num_threads(1)
    bns = nn.ModuleList([nn.BatchNorm2d(c) for c in (64, 64, 256, 256)])
    floats = [b for b in bns.buffers() if b.dtype == torch.float32]
    sizes = [b.numel() for b in floats]
    flat = torch.cat(floats)
    clones = per_call_us(lambda: [b.clone() for b in floats])
    cat = per_call_us(lambda: torch.cat(floats))
    split = per_call_us(lambda: flat.split(sizes))
    n = len(floats)
    print(f"{n} buffers: clones {clones:.1f} us ({clones / n:.1f} each); one cat {cat:.1f} us, "
          f"cut into views {split:.1f} us ({split / n:.1f} each)")


if __name__ == "__main__":
    main()
