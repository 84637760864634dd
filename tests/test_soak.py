"""A long run under a tight budget: nothing grows that should not."""

import resource

import torch

import deepum

from . import models
from .helpers import unconstrained_peak


def test_500_steps_stay_flat():
    budget = unconstrained_peak(models.mlp, models.mlp_batches, models.classify, 3) // 3
    torch.manual_seed(0)
    model = models.mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    batches = models.mlp_batches(4)
    samples = []
    with deepum.oversubscribe(budget, device="cpu") as session:
        pager = session.pager
        for step in range(500):
            x, y = batches[step % len(batches)]
            opt.zero_grad(set_to_none=True)
            models.classify(model, (x, y)).backward()
            opt.step()
            if step >= 50 and step % 50 == 0:
                stats = session.stats()
                samples.append((
                    len(pager.table),                    # page table
                    stats["host_bytes"],                 # host copies held (the pool)
                    len(session._mode.eids),             # execution IDs learned
                    len(pager.policy.successors),        # correlation table
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                ))
        final = session.stats()
    first, last = samples[0], samples[-1]
    # Pages go out and come back in all along (faulted, or prefetched by a plan).
    assert final["evictions"] > 1000 and final["faults"] + final["prefetches"] > 1000
    # Tables and host memory stop growing once the step repeats.
    assert last[0] <= first[0] * 1.05 + 8, samples
    assert last[1] <= first[1] * 1.05, samples
    assert last[2] == first[2] and last[3] == first[3], samples
    # Peak RSS (KiB) may creep by allocator noise, not by a leak per step.
    assert last[4] - first[4] < 64 * 1024, samples
    # Dead storages released their host copies: what the pool holds is
    # bounded by what is evicted now plus its free lists, not by history.
    assert final["host_bytes"] < 4 * budget
    assert final["dead_pages"] > 10 * final["managed_pages"]
