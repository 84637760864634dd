"""Bytes the step over parked state copies, by the optimizer's implementation (cpu tier).

    python benchmarks/park_traffic_cpu.py [SHARE]

Trains tests/test_parking.py's small Llama-family model at SHARE (default
0.5) of its peak with AdamW three ways (fused, foreach, one tensor at a
time) and counts, over the steps whose state was parked, the bytes the
step copied in (device copies of parked entries) and back (into their host
buffers) per byte parked. A fused step reads and writes each parked entry
once. The other two run one operator per update term: under the parked
step's dispatch mode (engine/parkstep.py) each operator that reads a parked
entry copies it in again; run sliced (engine/parkslice.py, session 28),
each entry is copied in and back once. Run from the repository root.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from deepum.engine import parkslice, parkstep  # noqa: E402
from tests.helpers import train  # noqa: E402
from tests.test_parking import _batches, _budget, _llama, _lm  # noqa: E402

KINDS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "one tensor at a time": {"foreach": False}}


def main() -> None:
    share = float(sys.argv[1]) if len(sys.argv) > 1 else 0.5
    budget = _budget(share)
    counted = {"in": 0, "back": 0}
    bring, run = parkstep.ParkedStep._bring, parkstep.ParkedStep._run

    def counting_bring(self, *a, **k):
        sl = bring(self, *a, **k)
        counted["in"] += sum(host.nbytes for host in sl.swap.values())  # (device copy -> its host buffer)
        return sl

    def counting_run(self, func, sl, *a, **k):
        counted["back"] += sum(h.nbytes for h, _ in sl.back)
        return run(self, func, sl, *a, **k)

    sliced_bring, sliced_back = parkslice.SlicedStep._bring, parkslice.SlicedStep._back

    def counting_sliced_bring(self, entries, stream):
        counted["in"] += sum(h.nbytes for _, _, h in entries)
        return sliced_bring(self, entries, stream)

    def counting_sliced_back(self, sl, stream):
        counted["back"] += sum(h.nbytes for _, _, h in sl.entries)
        return sliced_back(self, sl, stream)

    parkstep.ParkedStep._bring = counting_bring
    parkstep.ParkedStep._run = counting_run
    parkslice.SlicedStep._bring = counting_sliced_bring
    parkslice.SlicedStep._back = counting_sliced_back
    try:
        for name, options in KINDS.items():
            counted.update({"in": 0, "back": 0})
            stats = train(_llama, _batches, _lm, steps=16, budget=budget,
                          opt=lambda params, o=options: torch.optim.AdamW(params, lr=1e-3, **o))[3]
            parked = stats["parked_bytes"]  # summed over the steps' ends
            print(f"{name}: parked {parked / 2**20:.1f} MiB over the steps; copied in {counted['in'] / max(parked, 1):.2f}"
                  f" and back {counted['back'] / max(parked, 1):.2f} bytes per parked byte; paging_stops "
                  f"{stats['paging_stops']}, regions {stats['regions']}")
    finally:
        parkstep.ParkedStep._bring, parkstep.ParkedStep._run = bring, run
        parkslice.SlicedStep._bring, parkslice.SlicedStep._back = sliced_bring, sliced_back


if __name__ == "__main__":
    main()
