"""The cost of new execution IDs under deepum on CPU.

    python benchmarks/first_step_cpu.py

Two cases: 20,000 chained 4-element additions (x = x.add(w), whose IDs never
recur; microseconds per operator over two passes), and a small HF GPT-2 (4 layers, d=256, batch 4 x 128) trains 3 steps under a
budget that never binds, with the output-size estimates cached by argument
metadata (the engine) and with a meta run for every new execution ID (the
engine before the cache). Prints seconds per step for each.
"""

from __future__ import annotations

import time

import torch

import deepum
from deepum.engine.intercept import mode
from deepum.engine.intercept.estimate import estimate


def run(steps: int = 3) -> list[float]:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=256, n_head=4, vocab_size=1024, n_positions=128,
                                       attn_implementation="eager"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    ids = torch.randint(0, 1024, (4, 128), generator=torch.Generator().manual_seed(1))
    times = []
    with deepum.oversubscribe(1.0, "cpu"):
        for _ in range(steps):
            t0 = time.perf_counter()
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
    return times


def chain(n: int = 20000) -> list[float]:
    out = []
    with deepum.oversubscribe(1.0, "cpu", adopt=False):
        for _ in range(2):
            x, w = torch.ones(4), torch.ones(4)
            t0 = time.perf_counter()
            for _ in range(n):
                x = x.add(w)
            out.append((time.perf_counter() - t0) / n * 1e6)
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(1)  # imports and first-call costs out of the way
    results = {"metadata cache": (chain(), run())}
    mode.estimate_cached = lambda cache, plan, func, args, kwargs: estimate(plan, func, args, kwargs)
    results["meta run per ID"] = (chain(), run())
    print(f"torch {torch.__version__}, 1 thread")
    for name, (us, steps) in results.items():
        print(f"{name:16s} chain us/op (pass 1, 2): {us[0]:.0f} {us[1]:.0f}; "
              f"GPT-2 s/step (1, 2, 3): {' '.join(f'{t:.3f}' for t in steps)}")
