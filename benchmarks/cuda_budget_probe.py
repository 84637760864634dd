"""Where does reserved memory pass the budget? The thread test's workload on CUDA, with allocator stats.

    python benchmarks/cuda_budget_probe.py

For 1 and 4 threads, with and without stress mode: the budget, the cap the
session gives the caching allocator, max_memory_reserved, and the
allocator's counters (segments, retries, OOMs).
"""

from __future__ import annotations

import threading

import torch

import deepum
from tests.test_concurrency import _model, _train


def probe(threads: int, stress: bool) -> dict:
    footprint = sum(p.numel() * 16 for p in _model(0, "cuda").parameters())
    reserve = threads * (48 << 20)
    budget = threads * footprint // 4 + reserve
    torch.cuda.empty_cache()
    errors = []
    with deepum.oversubscribe(budget, "cuda", stress=stress, reserve=reserve) as session:
        models = [_model(i, "cuda") for i in range(threads)]

        def work(i):
            try:
                with session.attach():
                    _train(models[i], i, "cuda")
            except BaseException as e:
                errors.append(repr(e)[:200])

        ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        st = torch.cuda.memory_stats()
        stats = session.stats()
    return {"threads": threads, "stress": stress, "budget_MiB": budget >> 20,
            "cap_MiB": max(budget - (64 << 20), budget // 2) >> 20,  # as Session.__enter__ sets it
            "peak_reserved_MiB": stats["peak_device_bytes"] >> 20,
            "reserved_peak_stat_MiB": st["reserved_bytes.all.peak"] >> 20,
            "segments_peak": st["segment.all.peak"], "alloc_retries": st["num_alloc_retries"],
            "ooms": st["num_ooms"], "oom_retries": stats["oom_retries"], "errors": errors}


if __name__ == "__main__":
    for threads in (1, 4):
        for stress in (False, True):
            print(probe(threads, stress), flush=True)
