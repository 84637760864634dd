"""Views ([Note: views] in engine/intercept/mode.py): metadata-only operators run at once and
take no step position; one that checks its bounds against a storage off the device brings it
in first; the recording counts their pages as used by the operator after them."""

from __future__ import annotations

import torch

import deepum
from deepum.core.pages import EVICTED, RESIDENT

from . import models
from .helpers import assert_identical, train, unconstrained_peak


def _page(session, t):
    # Past host access's wrappers: asking for the storage there would bring it in.
    return session.pager.table.pages[torch._C.TensorBase.untyped_storage(t)._cdata]


def test_a_view_of_a_resident_page_runs_at_once():
    with deepum.oversubscribe("64MiB", "cpu", dormant=False) as s:
        y = torch.arange(4096.0) * 2
        before = s.stats()
        v = y.view(64, 64).t()
        after = s.stats()
    assert after["views"] == before["views"] + 2
    assert after["ops"] == before["ops"] and after["faults"] == before["faults"]
    assert torch.equal(v, (torch.arange(4096.0) * 2).view(64, 64).t())


def test_a_view_of_an_evicted_page_brings_it_in_first():
    # stress: every page leaves after every operator, so y is on the host.
    with deepum.oversubscribe("64MiB", "cpu", stress=True) as s:
        y = torch.arange(4096.0) * 2
        assert _page(s, y).state == EVICTED
        before = s.stats()
        v = y.view(64, 64).t()
        after = s.stats()
        assert _page(s, y).state == RESIDENT
    assert after["faults"] == before["faults"] + 1
    assert after["views"] == before["views"] + 2 and after["ops"] == before["ops"]
    assert torch.equal(v, (torch.arange(4096.0) * 2).view(64, 64).t())


def test_views_are_no_step_positions_whichever_way_they_go():
    # Whether a view finds its page resident differs between the recorded
    # step and the planned ones; counted as positions, the planned step
    # would not line up with the recording and would be left every step.
    make = (models.gpt2, models.token_batches, models.lm_loss)
    ref = train(*make, 7)
    budget = max(unconstrained_peak(*make, 7) // 2, 1 << 20)
    each = []
    got = train(*make, 7, budget=budget, plan=True, each_step=each)
    assert_identical(ref, got)
    st = got[3]
    assert st["views"] > 0 and st["evictions"] > 0, st
    assert st["planned_steps"] >= 4 and st["plan_departures"] == 0, st


def test_without_the_fast_path_views_are_operators():
    # Thresholds.view_fast_path=False: the engine as before views had a path
    # of their own (for A/B measurement in one process).
    from deepum.core.config import Config, Thresholds

    config = Config(dormant=False, thresholds=Thresholds(view_fast_path=False))
    with deepum.oversubscribe("64MiB", "cpu", config=config) as s:
        y = torch.arange(4096.0) * 2
        before = s.stats()
        v = y.view(64, 64).t()
        after = s.stats()
    assert after["views"] == before["views"] == 0 and after["ops"] == before["ops"] + 2
    assert torch.equal(v, (torch.arange(4096.0) * 2).view(64, 64).t())


def test_pages_of_views_count_as_used_in_the_recorded_step():
    # The backward pass of a T5 takes `t` of gradients the plan sends to the
    # host until their next use: a view that checks its bounds needs its
    # page in device memory. Counted as used by the operator after the view,
    # the planned steps neither fault them in nor hold more than planned.
    from deepum.benchsuite.models import Workload, adamw, standard_step

    dev = torch.device("cpu")

    def make():
        torch.manual_seed(0)
        work = Workload("tiny-t5", dev, dev)
        return work, standard_step(work, adamw(work.model, dev))

    work, step = make()
    with deepum.oversubscribe(1.0, dev, dormant=False) as s:
        for i in range(2):
            step(work.host_batch(i))
    budget = s.stats()["peak_managed_bytes"] // 3
    work, step = make()
    with deepum.oversubscribe(budget, dev, plan=True) as s:
        for i in range(4):
            step(work.host_batch(i))
        before = s.stats()
        for i in range(4, 7):
            step(work.host_batch(i))
        after = s.stats()
    moved = {k: after[k] - before[k] for k in ("planned_steps", "faults", "plan_over_ops", "ops", "views")}
    assert moved["planned_steps"] == 3 and moved["views"] > 0, moved
    assert moved["faults"] == 0 and moved["plan_over_ops"] <= moved["ops"] // 100, moved
