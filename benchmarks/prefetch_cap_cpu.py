"""How much the cap on prefetched-and-unused bytes matters at a tight budget (cpu device).

    python benchmarks/prefetch_cap_cpu.py

A 24-block residual CNN (batch 16 x 3 x 32 x 32, AdamW) trains 6 steps under
12 MiB: with lru, and with the deepum policy without a cap, with a cap of a
quarter and of an eighth of the limit (the default). Prints the traffic.
"""

import os
import sys

import torch

import deepum

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from tests.models import resnet  # noqa: E402  (the model the test of the cap trains)

torch.set_num_threads(1)


def run(policy: str, cap_divisor: int | None) -> dict:
    torch.manual_seed(0)
    model = resnet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    with deepum.oversubscribe(12 << 20, "cpu", policy=policy) as s:
        s.pager.prefetch_cap = s.pager.table.limit // cap_divisor if cap_divisor else 1 << 62
        for _ in range(6):
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    return s.stats()


if __name__ == "__main__":
    for label, policy, cap in (("lru", "lru", None), ("deepum, no cap", "deepum", None),
                               ("deepum, cap 1/4", "deepum", 4), ("deepum, cap 1/8", "deepum", 8)):
        st = run(policy, cap)
        print(f"{label:16s} GB in {st['bytes_to_device'] / 1e9:.2f}  GB out {st['bytes_to_host'] / 1e9:.2f}  "
              f"prefetches {st['prefetches']}  hits {st['prefetch_hits']}  wasted {st['wasted_prefetches']}  "
              f"faults {st['faults']}")
