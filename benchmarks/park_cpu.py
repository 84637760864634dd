"""A small Llama-family model whose model state is most of its budget, on the cpu tier.

    python benchmarks/park_cpu.py SHARE [BATCH]

Trains a 6-layer Llama-family model (d=128, vocab 512, sequences of 64,
AdamW one parameter at a time) for 16 steps at SHARE of its unconstrained
peak, one thread, and prints what the session did: regions set, state
parked, paging stopped, evictions in the last four steps, and the median
of their times beside the same steps unconstrained.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

import deepum


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    return LlamaForCausalLM(LlamaConfig(num_hidden_layers=6, hidden_size=128, intermediate_size=352,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                                        max_position_embeddings=128, tie_word_embeddings=False))


def run(budget: int | None, batch: int) -> tuple[list[float], dict | None, list[int]]:
    torch.manual_seed(0)
    model = _llama()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
    g = torch.Generator().manual_seed(3)
    batches = [torch.randint(1, 512, (batch, 64), generator=g) for _ in range(16)]
    times, evictions = [], []

    def loop(session=None):
        for ids in batches:
            t0 = time.perf_counter()
            before = session.stats()["evictions"] if session else 0
            opt.zero_grad(set_to_none=True)
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
            evictions.append(session.stats()["evictions"] - before if session else 0)

    if budget is None:
        loop()
        return times, None, evictions
    with deepum.oversubscribe(budget, device="cpu") as session:
        loop(session)
    return times, session.stats(), evictions


def main() -> None:
    torch.set_num_threads(1)
    share = float(sys.argv[1])
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    with deepum.oversubscribe(1.0, device="cpu", dormant=False, recompute_blocks=False) as probe:
        torch.manual_seed(0)
        model = _llama()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
        ids = torch.randint(1, 512, (batch, 64))
        for _ in range(2):
            opt.zero_grad(set_to_none=True)
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
    peak = probe.stats()["peak_managed_bytes"]
    plain, _, _ = run(None, batch)
    times, st, ev = run(int(peak * share), batch)
    print(f"share {share} batch {batch}: peak {peak} budget {int(peak * share)}")
    print(f"  regions {st['regions']} parked_bytes {st['parked_bytes']} paging_stops {st['paging_stops']} "
          f"paging_starts {st['paging_starts']} overshoots {st['overshoots']} last four steps' evictions {ev[-4:]}")
    print(f"  last four steps: {statistics.median(times[-4:]) * 1e3:.1f} ms against {statistics.median(plain[-4:]) * 1e3:.1f} "
          f"ms unconstrained")


if __name__ == "__main__":
    main()
