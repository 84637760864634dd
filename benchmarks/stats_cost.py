"""What one ``session.stats()`` costs the host, and its parts, in a dormant session.

    python benchmarks/stats_cost.py [MODEL] [CALLS]

Trains the bench's MODEL (default resnet152; step_anatomy.py's ``prepare``)
three steps in a session whose budget is twice its peak (dormant: nothing is
intercepted), then times CALLS calls (default 20) of ``session.stats()`` and
of the pieces it reads: the GPU energy counter (NVML), the caching
allocator's reserved peak, the count of pages by kind, and the harvest of
timed events. The bench's phase counter reads ``stats()`` three times a
step, so a costly reading shows as a slower step on a model whose step has
little host slack (ResNet-152). Prints microseconds per call of each.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from step_anatomy import prepare

import deepum


def _per_call(fn, calls: int) -> float:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main() -> None:
    model = sys.argv[1] if len(sys.argv) > 1 else "resnet152"
    calls = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    device, sync, work, step, peak = prepare(model)
    with deepum.oversubscribe(int(peak * 2), device) as session:
        for i in range(3):
            step(work.host_batch(i))
        sync()
        pager = session.pager
        parts = {"session.stats()": session.stats,
                 "pager.stats()": pager.stats,
                 "transfers.harvest()": pager.transfers.harvest,
                 "pages by kind": pager._pages_by_kind}
        if device.type == "cuda":
            parts["torch.cuda.max_memory_reserved"] = lambda: torch.cuda.max_memory_reserved(device)
        if pager.energy is not None:
            parts["energy.joules()"] = pager.energy.joules
            nvml, handle = pager.energy.nvml, pager.energy.handle
            parts["NVML energy query"] = lambda: nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        for name, fn in parts.items():
            print(f"{name:34s} {_per_call(fn, calls):10.1f} us per call")


if __name__ == "__main__":
    main()
