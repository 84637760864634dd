"""The victim choices: what each policy and option changes, against demand paging."""

from __future__ import annotations

from . import models
from .helpers import assert_identical, train


def test_no_prefetch_keeps_deepums_victim_choice_not_lrus():
    # prefetch=False used to give exactly the lru run: the policy only
    # observed operators inside the prefetch path, so its window stayed empty.
    make = (models.resnet, models.resnet_batches, models.classify)
    ref = train(*make, 4)
    budget = 12 << 20
    got = train(*make, 4, budget=budget, prefetch=False, victims="age")
    lru = train(*make, 4, budget=budget, policy="lru")
    assert_identical(ref, got)
    st, st_lru = got[3], lru[3]
    assert st["prefetches"] == 0 and st["evictions"] > 0, st
    assert st["prediction_accuracy"] > 0.5, st  # the window is there to protect pages
    counts = ("faults", "evictions", "bytes_to_device", "bytes_to_host")
    assert tuple(st[k] for k in counts) != tuple(st_lru[k] for k in counts)


def test_a_data_loader_sampler_stays_within_the_budget():
    # RandomSampler draws torch.randperm(n) and reads it with tolist(): a
    # factory whose output (4 MB here) once ran on the quiet path and passed
    # the budget (the engine at 0435c51: one overshoot, a 9.2 MB peak).
    import torch

    import deepum

    class Indices(torch.utils.data.Dataset):
        def __len__(self):
            return 500_000

        def __getitem__(self, i):
            return i

    budget = 8 << 20
    with deepum.oversubscribe(budget, "cpu", strict=True) as s:
        held = [torch.ones(256, 1024) for _ in range(5)]  # 5 MiB: below pressure (3/4)
        loader = torch.utils.data.DataLoader(Indices(), batch_size=4, shuffle=True)
        first = next(iter(loader))
        st = s.stats()
    assert first.shape == (4,) and len(held) == 5
    assert st["overshoots"] == 0 and st["peak_device_bytes"] <= budget, st
    assert st["evictions"] > 0, st
