"""Paging events per step of a small GPT-2 on the cpu tier: counts to compare two engines.

    python benchmarks/paging_counts_cpu.py [FRACTION] [SRC] ['{"victims": "age"}']

Trains an HF GPT-2 (4 layers, d=256, batch 8 x 256) two steps unconstrained
for its peak, then under FRACTION of it (default 0.5), and prints the
evictions, drops, recomputes, faults and bytes of steps 4-5. SRC puts another
copy of deepum's src/ first on the path (another commit); the JSON argument
is session options. Counts, not times, are the point: the cpu tier's timing
says nothing about a GPU's.
"""

import json
import sys
import time

if len(sys.argv) > 2:
    sys.path.insert(0, sys.argv[2])

from cpu_gpt2 import gpt2_step  # noqa: E402

import deepum  # noqa: E402

KEYS = ("evictions", "drops", "recomputes", "faults", "prefetches", "prefetch_hits", "wasted_prefetches",
        "bytes_to_device", "bytes_to_host", "bytes_dropped", "lineage_released", "writebacks", "ops",
        "plans", "planned_steps", "plan_departures", "planned_evictions", "late_prefetches", "plan_over_ops",
        "plan_short_evictions")


def main() -> None:
    frac = float(sys.argv[1]) if len(sys.argv) > 1 else 0.5
    options = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    step = gpt2_step()
    with deepum.oversubscribe(1.0, "cpu") as s:
        for i in range(2):
            step(i)
    peak = s.stats()["peak_managed_bytes"]
    with deepum.oversubscribe(int(peak * frac), "cpu", **options) as s:
        for i in range(3):
            step(i)
        before, t0 = s.stats(), time.time()
        for i in range(3, 5):
            step(i)
        end = s.stats()
    print(f"{deepum.__file__}: peak {peak / 2**20:.1f} MiB, budget {frac}, {(time.time() - t0) / 2:.2f} s/step")
    for k in KEYS:
        if k in end:
            v = (end[k] - before.get(k, 0)) / 2
            print(f"  {k:18s} {v / 2**20 if 'bytes' in k else v:10.1f}{' MiB' if 'bytes' in k else ''}")


if __name__ == "__main__":
    main()
