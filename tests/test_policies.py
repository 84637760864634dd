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
