"""Host cost of recomputed blocks: deepum's regions against torch.utils.checkpoint, on the cpu tier.

    python benchmarks/regions_host_cpu.py [--blocks 48] [--channels 4] [--steps 30]

A CNN of BatchNorm residual blocks with tiny convolutions (32 images of
8x8, one thread): its step is bound by the host, as ResNet-152 B128's is
on the GPU (docs/BENCHMARKS.md, session 27). Three cases, each training
the same model from the same seed: plain; every block under non-reentrant
``torch.utils.checkpoint``; deepum with a budget under plain's peak, so
that blocks are recomputed as regions and the session runs dormant. The
budget is ``--share`` of the peak a first, unbound deepum run counted.
Prints each case's median step, the regions deepum chose, and each
recomputing case's extra time per recomputed block over plain.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.utils.checkpoint as ckpt
from torch import nn

import deepum
from deepum.benchsuite.models import _Residual  # the tiny-cnn bench model's block


class _Net(nn.Module):
    def __init__(self, blocks: int, c: int, checkpointed: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.Sequential(*[_Residual(c) for _ in range(blocks)])
        self.head = nn.Linear(c, 10)
        self.checkpointed = checkpointed

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = ckpt.checkpoint(b, x, use_reentrant=False) if self.checkpointed else b(x)
        return self.head(x.mean((2, 3)))


def _run(args, method: str, budget: int | None = None) -> tuple[float, dict]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(32, 3, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)) for _ in range(4)]
    session = deepum.oversubscribe(budget, "cpu") if method == "deepum" else None
    if session is not None:
        session.__enter__()
    try:
        model = _Net(args.blocks, args.channels, method == "ckpt")
        opt = torch.optim.AdamW(model.parameters())
        times = []
        for i in range(args.warmup + args.steps):
            x, y = data[i % 4]
            t0 = time.perf_counter()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            times.append(time.perf_counter() - t0)
        stats = session.stats() if session is not None else {}
    finally:
        if session is not None:
            session.__exit__(None, None, None)
    return statistics.median(times[args.warmup:]) * 1e3, stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=48)
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=16)
    ap.add_argument("--share", type=float, default=0.5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    _, unbound = _run(argparse.Namespace(**{**vars(args), "steps": 1, "warmup": 2}), "deepum", 1 << 30)
    budget = int(unbound["peak_device_bytes"] * args.share)
    plain, _ = _run(args, "plain")
    checkpointed, _ = _run(args, "ckpt")
    regions, stats = _run(args, "deepum", budget)
    print(f"plain {plain:.1f} ms; checkpoint every block {checkpointed:.1f} ms "
          f"({(checkpointed - plain) / args.blocks:.2f} ms a block); deepum at {args.share} of the peak "
          f"{regions:.1f} ms, {stats.get('regions')} regions, dormant {stats.get('dormant')} "
          f"({(regions - plain) / max(stats.get('regions') or 1, 1):.2f} ms a region)")


if __name__ == "__main__":
    main()
