"""Train a small GPT under a memory budget a third of its footprint, bit-identical.

    python examples/train_gpt.py            # CUDA if present, else the cpu device
    python examples/train_gpt.py --steps 10 --fraction 0.25

It trains the same model twice from the same seed: once with no budget,
measuring the peak memory, and once under deepum with a budget of a fraction
of that peak. It prints both loss curves, checks that every loss and every
parameter is identical, and prints what the pager did.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import deepum
from deepum.api.cli import summary


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.heads)
        att = att.masked_fill(torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int, seq: int) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(seq, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def train(args, device, budget=None):
    torch.manual_seed(0)
    model = GPT(args.vocab, args.d, args.layers, args.heads, args.seq).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, foreach=True)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=g) for _ in range(args.steps)]
    losses = []

    def loop():
        for ids in batches:
            ids = ids.to(device)
            opt.zero_grad(set_to_none=True)
            logits = model(ids[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, args.vocab), ids[:, 1:].reshape(-1))
            loss.backward()
            opt.step()
            losses.append(loss.item())

    t0 = time.perf_counter()
    # A budget the size of the whole device never binds: it measures the footprint.
    with deepum.oversubscribe(budget or 1.0, device=device) as session:
        loop()
    seconds = time.perf_counter() - t0
    return losses, [p.detach().cpu() for p in model.parameters()], session.stats(), seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--fraction", type=float, default=1 / 3, help="budget as a fraction of the measured peak")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--vocab", type=int, default=512)
    args = p.parse_args()

    ref_losses, ref_params, ref_stats, ref_s = train(args, args.device)
    peak = ref_stats["peak_device_bytes"]
    budget = int(peak * args.fraction)
    print(f"unconstrained: peak {peak / 2**20:.1f} MiB, {ref_s:.2f} s")
    losses, params, stats, s = train(args, args.device, budget)
    print(f"under deepum:  budget {budget / 2**20:.1f} MiB ({args.fraction:.2f} of the peak), {s:.2f} s")
    for i, (a, b) in enumerate(zip(ref_losses, losses)):
        print(f"  step {i}: loss {a:.6f} | {b:.6f}")
    print(summary(stats))
    same = ref_losses == losses and all(torch.equal(a, b) for a, b in zip(ref_params, params))
    ok = same and stats["evictions"] > 0 and stats["peak_device_bytes"] <= budget
    print("bit-identical losses and parameters, budget held" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
