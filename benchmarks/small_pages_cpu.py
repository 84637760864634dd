"""Which pages a paged step faults back, by size and kind, on the cpu tier.

    python benchmarks/small_pages_cpu.py [FRACTION [VICTIM_SMALL]]

Trains dormant_overhead.py's ``resnet`` case on the cpu (a 50-block
bottleneck network with batch norm, AdamW, batch 4 at 16x16) at FRACTION
(default 0.5) of its peak, with ``Thresholds.victim_small`` set to
VICTIM_SMALL (default: the engine's), and prints the step time and the
pager's counters a step after four steps, then the faulted pages a step by
kind and size class. A victim choice that ranks only the least recently
used pages takes batch norm's statistics and step counters (bytes each),
and each comes back by a fault of its own (docs/BENCHMARKS.md, session 8).
"""

import collections
import dataclasses
import os
import sys
import time

import torch

import deepum
from deepum.core.config import Thresholds
from deepum.engine import prefetch

sys.path.insert(0, os.path.dirname(__file__))
import dormant_overhead  # noqa: E402

KEYS = ("ops", "evictions", "faults", "prefetches", "drops", "recomputes", "bytes_to_host", "bytes_to_device")


def size_class(nbytes: int) -> str:
    return "<64K" if nbytes < 64 << 10 else "<1M" if nbytes < 1 << 20 else ">=1M"


def main() -> None:
    fraction = float(sys.argv[1]) if len(sys.argv) > 1 else 0.5
    th = Thresholds()
    if len(sys.argv) > 2:
        th = dataclasses.replace(th, victim_small=float(sys.argv[2]))
    torch.set_num_threads(2)
    device = torch.device("cpu")
    run, _ = dormant_overhead.resnet_case(device)
    with deepum.oversubscribe(1.0, "cpu", dormant=False) as s:
        for _ in range(3):
            run()
    peak = s.stats()["peak_managed_bytes"]
    faulted = collections.Counter()
    original = prefetch.Prefetcher.fault

    def fault(self, pages):
        for p in pages:
            faulted[p.kind.name.lower(), size_class(p.nbytes)] += 1
        return original(self, pages)

    prefetch.Prefetcher.fault = fault
    steps = 4
    with deepum.oversubscribe(int(peak * fraction), "cpu", dormant=False, thresholds=th) as s:
        for _ in range(4):
            run()
        faulted.clear()
        before, t0 = s.stats(), time.perf_counter()
        for _ in range(steps):
            run()
        secs, after = (time.perf_counter() - t0) / steps, s.stats()
    prefetch.Prefetcher.fault = original
    print(f"peak {peak / 1e6:.1f} MB, budget {fraction} of it, victim_small {th.victim_small:g}: "
          f"{secs * 1e3:.1f} ms a step")
    print("a step: " + ", ".join(f"{k} {(after[k] - before[k]) / steps:.0f}" for k in KEYS))
    print("faulted a step: " + ", ".join(f"{k} {v} {n / steps:.1f}" for (k, v), n in sorted(faulted.items())))


if __name__ == "__main__":
    main()
