"""Regions on one bench model: the census, each window's forward peak, and step times.

    python benchmarks/region_probe.py MODEL BUDGET_GIB [STEPS] ['{"option": value}']

Trains the bench's model (bf16 autocast on CUDA, fused AdamW, a fresh host
batch each step) under a session of BUDGET_GIB and prints, per candidate
block, the bytes it frees, its forward's seconds, whether it is safe to
recompute (and why not), and whether it was chosen; then the forward peaks
the regions saw and each step's time ([Note: regions] in core/regions.py).
"""

from __future__ import annotations

import json
import sys
import time

import torch

import deepum
from deepum.benchsuite.models import Workload, adamw, standard_step


def main() -> None:
    model, gib = sys.argv[1], float(sys.argv[2])
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    options = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with deepum.oversubscribe(int(gib * 2**30), device=device, **options) as session:
        work = Workload(model, device, model_device=device)
        opt = adamw(work.model, device)
        step = standard_step(work, opt)
        for i in range(steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step(work.host_batch(i))
            if device.type == "cuda":
                torch.cuda.synchronize()
            st = session.stats()
            print(f"step {i}: {(time.perf_counter() - t0) * 1e3:.1f} ms, ops {st['ops']}, "
                  f"evictions {st['evictions']}, regions {st['regions']}, dormant {st['dormant']}", flush=True)
        regions = session._watch.regions if session._watch is not None else None
        if regions is not None:
            for row in regions.report():
                print(f"  block {row['order']:3d}: frees {row['saved_bytes'] / 2**20:9.1f} MiB, "
                      f"{row['seconds'] * 1e3:7.2f} ms, calls {row['calls']}, safe {row['safe']} {row['why']}, "
                      f"cache {row['hf_cache']}, chosen {row['chosen']}")
            print("windows (forward peak GiB, added):",
                  [(round(p / 2**30, 2), a) for p, a in regions.history], "target GiB",
                  round(regions.plan.target_bytes / 2**30, 2))
        print({k: v for k, v in session.stats().items() if isinstance(v, (int, float))})


if __name__ == "__main__":
    main()
