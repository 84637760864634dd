"""Training under a budget gives the same bits as training without one.

Each case runs 5 steps plain, then under deepum on the cpu device at a budget
of at most a third of the unconstrained peak, and asserts identical losses,
parameters and buffers, that pages really moved, and that the budget held.
"""

from __future__ import annotations

import pytest
import torch

import deepum
from deepum.engine import movers

from . import models
from .helpers import assert_identical, train, unconstrained_peak

# A tensor's storage past host access's wrappers (asking through them would fault the page in).
_storage = torch._C.TensorBase.untyped_storage

STEPS = 5

CASES = {
    "mlp": (models.mlp, models.mlp_batches, models.classify),
    "cnn_batchnorm": (models.cnn, models.cnn_batches, models.classify),
    "gpt2": (models.gpt2, models.token_batches, models.lm_loss),
    "bert": (models.bert, models.token_batches, models.mlm_loss),
}

_PEAKS: dict = {}


def _peak(name, opt=None):
    key = (name, opt)
    if key not in _PEAKS:
        _PEAKS[key] = unconstrained_peak(*CASES[name], STEPS, _OPTS[opt])
    return _PEAKS[key]


_OPTS = {
    None: None,
    "foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True),
    "fused": lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
    "sgd": lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, foreach=False),
}


def check(name, policy, opt=None, fraction=3):
    make_model, make_batches, loss_fn = CASES[name]
    ref = train(make_model, make_batches, loss_fn, STEPS, _OPTS[opt])
    budget = max(_peak(name, opt) // fraction, 1 << 20)  # 1 MiB: the smallest budget
    got = train(make_model, make_batches, loss_fn, STEPS, _OPTS[opt], budget=budget, policy=policy)
    assert_identical(ref, got)
    stats = got[3]
    assert stats["evictions"] > 0 and stats["faults"] > 0, stats
    assert stats["writebacks"] > 0 and stats["dropped_clean"] > 0, stats
    assert stats["peak_device_bytes"] <= budget, (stats["peak_device_bytes"], budget)
    return stats


@pytest.mark.parametrize("policy", ["deepum", "lru"])
@pytest.mark.parametrize("name", list(CASES))
def test_bit_identical_under_a_third_of_the_peak(name, policy):
    stats = check(name, policy)
    if policy == "deepum":
        assert stats["prefetches"] > 0 and stats["prefetch_hits"] > 0, stats
        assert stats["prediction_accuracy"] > 0.5, stats
    else:
        assert stats["prefetches"] == 0


@pytest.mark.parametrize("plan", [False, True])
@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_bit_identical_with_dropout_on(name, plan):
    # Issue 12's exactness bar names dropout: the random masks of every step
    # must come out as plain's while pages are dropped, rebuilt and moved (on
    # the cpu tier dropout draws its mask in place, which no recipe replays;
    # the replay of a seeded operator is tested in test_recompute.py).
    make_model, make_batches, loss_fn = CASES[name]
    dropped = (lambda: make_model(dropout=0.1), make_batches, loss_fn)
    steps = STEPS + 1  # a recorded step and planned steps after it
    ref = train(*dropped, steps)
    budget = max(unconstrained_peak(*dropped, steps) // 3, 1 << 20)
    got = train(*dropped, steps, budget=budget, plan=plan)
    assert_identical(ref, got)
    stats = got[3]
    assert stats["evictions"] > 0 and stats["recomputes"] > 0, stats
    assert stats["peak_device_bytes"] <= budget, (stats["peak_device_bytes"], budget)
    assert (stats["planned_steps"] > 0) == plan, stats


@pytest.mark.parametrize("opt", ["foreach", "fused", "sgd"])
def test_optimizers(opt):
    if opt == "fused":
        try:
            p = torch.nn.Parameter(torch.zeros(2))
            p.grad = torch.zeros(2)
            torch.optim.AdamW([p], fused=True).step()
        except RuntimeError as e:  # fused AdamW on CPU needs torch >= 2.4
            pytest.skip(f"fused AdamW unavailable on this CPU build: {e}")
    stats = check("mlp", "deepum", opt=opt)
    if opt != "sgd":
        # The optimizer's foreach/fused call spans every parameter, more than fits.
        assert stats["chunked_ops"] > 0


def _steps(model, opt, batches) -> list[float]:
    losses = []
    for batch in batches:
        opt.zero_grad(set_to_none=True)
        loss = models.classify(model, batch)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_model_built_inside_the_session():
    """Parameters born inside the session are pages from their first operator."""
    import deepum

    ref = train(models.mlp, models.mlp_batches, models.classify, STEPS)
    budget = _peak("mlp") // 3
    torch.manual_seed(0)
    with deepum.oversubscribe(budget, device="cpu") as session:
        model = models.mlp()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
        losses = _steps(model, opt, models.mlp_batches()[:STEPS])
    assert losses == ref[0]
    for a, b in zip(ref[1], model.parameters()):
        assert torch.equal(a, b)
    assert session.stats()["evictions"] > 0


def test_siblings_made_alike_keep_stable_keys_of_their_own():
    # [Note: execution IDs and stable keys] in mode.py: built inside the
    # session, the four blocks' weights of one shape come from the same
    # factory after the same initializer, and AdamW's first step makes both
    # states of a weight by the same zeros_like of it. Each keeps a role of its
    # own (the prediction window names pages by role), while a loss the
    # program keeps from step to step hands its role to the next step's.
    budget = _peak("mlp") // 3
    torch.manual_seed(0)
    kept, loss_keys = [], []
    with deepum.oversubscribe(budget, device="cpu") as session:
        model = models.mlp()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
        pager = session.pager
        for batch in models.mlp_batches()[:STEPS]:
            opt.zero_grad(set_to_none=True)
            loss = models.classify(model, batch)
            loss.backward()
            opt.step()
            kept.append(loss)
            # Look at the pages past host access's wrappers: do not fault them in.
            loss_keys.append(pager.table.get(_storage(loss)._cdata).skey)
        tensors = list(model.parameters()) + [v for state in opt.state.values() for v in state.values()
                                              if torch.is_tensor(v) and v.numel() > 1]
        pages = [pager.table.get(_storage(t)._cdata) for t in tensors]
        assert pager.pressure and session.stats()["evictions"] > 0
        keys = [p.skey for p in pages]
        assert len(pages) == 3 * 9 * 2 - 0 and len(set(keys)) == len(keys)
        assert all(pager.live[p.skey] is p for p in pages)
        assert len(set(loss_keys[1:])) == 1


def _wide_mlp():
    """models.mlp, wider: half of its parameters is over the 1 MiB a budget needs at least."""
    return torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(128, 1024), torch.nn.GELU(),
                                                     torch.nn.Linear(1024, 128)) for _ in range(4)],
                               torch.nn.Linear(128, 10))


def test_adopting_a_model_larger_than_the_budget():
    """With adopt=True, tensors made before the session are pages from the start."""
    import deepum

    ref = train(_wide_mlp, models.mlp_batches, models.classify, 2)
    torch.manual_seed(0)
    model = _wide_mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    budget = model_bytes // 2
    with deepum.oversubscribe(budget, device="cpu", adopt=True) as session:
        # The model alone is twice the budget: entering evicted half of it.
        assert session.stats()["evictions"] > 0
        assert session.stats()["resident_bytes"] <= budget
        losses = _steps(model, opt, models.mlp_batches()[:2])
    assert losses == ref[0]
    for a, b in zip(ref[1], model.parameters()):
        assert torch.equal(a, b)
    assert session.stats()["peak_device_bytes"] <= budget


@pytest.mark.parametrize("opt", ["sgd_foreach", "adamw_foreach", "adamw_fused", "adamw_loop"])
def test_optimizer_over_parameters_each_near_the_budget(opt):
    """Each list element alone is more than half the budget: slices of one, written back right.

    (A regression: an unsplittable slice once ran without recording its
    writes, so a later eviction dropped the update as if it were clean.)
    """
    import deepum

    makers = {
        "sgd_foreach": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, foreach=True),
        "adamw_foreach": lambda ps: torch.optim.AdamW(ps, foreach=True),
        "adamw_fused": lambda ps: torch.optim.AdamW(ps, fused=True),
        "adamw_loop": lambda ps: torch.optim.AdamW(ps, foreach=False),
    }
    torch.manual_seed(0)
    ps0 = [torch.randn(512, 128) for _ in range(6)] + [torch.randn(128) for _ in range(6)]
    gs = [torch.randn_like(p) for p in ps0]

    def run(budget):
        ps = [torch.nn.Parameter(p.clone()) for p in ps0]
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        o = makers[opt](ps)
        if budget is None:
            o.step()
            o.step()
            return ps, None
        with deepum.oversubscribe(budget, device="cpu") as s:
            o.step()
            o.step()
        return ps, s.stats()

    try:
        ref, _ = run(None)
    except RuntimeError as e:
        pytest.skip(f"{opt} unavailable here: {e}")
    got, stats = run(1_200_000)
    assert all(torch.equal(a, b) for a, b in zip(ref, got))
    assert stats["evictions"] > 0 and stats["writebacks"] > 0


def test_manage_registers_a_model_and_optimizer_state():
    import deepum

    ref = train(_wide_mlp, models.mlp_batches, models.classify, 2)
    torch.manual_seed(0)
    model = _wide_mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    n_params = len(list(model.parameters()))
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with deepum.oversubscribe(model_bytes // 2, device="cpu") as session:
        assert session.manage(model, opt) == n_params  # no optimizer state yet
        assert session.stats()["resident_bytes"] <= model_bytes // 2  # made room at once
        losses = _steps(model, opt, models.mlp_batches()[:2])
    assert losses == ref[0]
    assert all(torch.equal(a, b) for a, b in zip(ref[1], model.parameters()))
    with pytest.raises(RuntimeError, match="active session"):
        session.manage(model)


def test_output_size_estimates_are_shared_by_metadata():
    """A chain that never recurs makes a new execution ID per operator; its
    meta-run estimates are shared by argument metadata, not redone per ID."""
    x, w = torch.ones(4), torch.ones(4)
    with deepum.oversubscribe(1.0, "cpu", adopt=False) as session:
        session.pager._pressure_begins()  # the full path, where execution IDs are formed
        for _ in range(200):
            x = x.add(w)
        mode = session._mode
        assert len(mode.eids) >= 200
        adds = [k for k in mode.meta_sizes if k[0].name == "aten.add.Tensor"]
        assert len(adds) == 1 and mode.meta_sizes[adds[0]] == 16
    assert torch.equal(x, torch.full((4,), 201.0))


def test_pages_made_before_pressure_get_stable_keys_when_it_begins():
    from deepum.engine.intercept.register import QUIET_SKEY

    with deepum.oversubscribe(64 << 20, "cpu") as s:
        # 8 MiB on the quiet path (factories always take the full path: their
        # size is known before they run, see [Note: sizes known before the run]).
        src = torch.randn(256, 1024)
        early = [src + i for i in range(8)]
        pager = s.pager
        pages = [pager.table.get(_storage(t)._cdata) for t in early]  # not faulted in
        assert not pager.pressure and {p.skey for p in pages} == {QUIET_SKEY}
        late = [torch.randn(256, 1024) for _ in range(80)]  # past the budget: pressure, evictions
        assert pager.pressure and pager.counters.evictions > 0
        keys = [p.skey for p in pages]
        assert min(keys) >= 0 and len(set(keys)) == len(keys)
        assert all(pager.live[p.skey] is p for p in pages)
        total = sum(float(t.sum()) for t in early + late)
    ref = sum(float(t.sum()) for t in early + late)
    assert total == ref


def test_prefetching_ahead_does_not_push_out_pages_needed_sooner():
    """A tight budget whose prediction window needs more than the budget
    holds: prefetched pages must not evict pages needed before them (without
    the cap on unused prefetched bytes, benchmarks/prefetch_cap_cpu.py moves
    1.8x the bytes of demand paging and wastes a third of its prefetches)."""
    make = (models.resnet, models.resnet_batches, models.classify)
    ref = train(*make, 4)
    budget = 12 << 20
    # Copies only: this is the prefetch cap's test. With recipes on, rebuild
    # chains also need room and, on a budget this small, their demand
    # evictions take prefetched pages too (counted as wasted); that interplay
    # is measured in docs/BENCHMARKS.md (session 4), not asserted here.
    # Page-level behaviour is measured here: no regions ([Note: regions]).
    got = train(*make, 4, budget=budget, recompute=False, recompute_blocks=False)
    lru = train(*make, 4, budget=budget, policy="lru", recompute=False, recompute_blocks=False)
    assert_identical(ref, got)
    st, st_lru = got[3], lru[3]
    assert st["prefetch_hits"] > 0 and st["evictions"] > 0, st
    # (Up to a tenth wasted: since optimizer states made on the first step
    # keep roles of their own, the window names more pages and prefetches
    # half again as many, 8% of them wasted, for the same bytes; without the
    # cap a third are wasted and the bytes grow 1.8x.)
    assert st["wasted_prefetches"] <= st["prefetches"] // 10, st
    assert st["bytes_to_device"] <= 1.1 * st_lru["bytes_to_device"], (st["bytes_to_device"], st_lru["bytes_to_device"])


@pytest.mark.skipif(not movers.can_swap(), reason="storages cannot change memory here")
def test_memory_of_copies_out_counts_against_the_limit_until_they_end(monkeypatch):
    # On CUDA a page copied out keeps its device memory until the copy ends
    # (engine/movers.py). The page table counts those bytes as leaving: at
    # every operator the pages, the outputs' reservation and the memory still
    # leaving fit the limit, and operators that need the room wait for the
    # oldest copies. Training stays bit-identical. Thresholds.cpu_copy_lag
    # makes the cpu tier's copies out hold their memory so for a few operators.
    from deepum.core.config import Thresholds
    from deepum.engine import pager as pager_module

    original_end = pager_module.Pager.end
    seen = {"over": 0, "max_leaving": 0, "ends": 0, "held": 0}

    def end(self, eid, written, *rest):
        table = self.table
        held = sum(e[2] for e in self.transfers.leaving)
        assert held == table.leaving_bytes, (held, table.leaving_bytes)
        # The memory is really held: by holder storages, not the pages'.
        assert all(e[1] is not None and e[1].nbytes() == e[2] for e in self.transfers.leaving)
        seen["held"] += bool(self.transfers.leaving)
        if table.resident_bytes + table.leaving_bytes > table.limit:
            seen["over"] += 1
        seen["max_leaving"] = max(seen["max_leaving"], table.leaving_bytes)
        seen["ends"] += 1
        return original_end(self, eid, written, *rest)

    make_model, make_batches, loss_fn = CASES["gpt2"]
    budget = _peak("gpt2") // 2
    ref = train(make_model, make_batches, loss_fn, STEPS)
    monkeypatch.setattr(pager_module.Pager, "end", end)
    got = train(make_model, make_batches, loss_fn, STEPS, budget=budget, thresholds=Thresholds(cpu_copy_lag=3))
    assert_identical(ref, got)
    stats = got[3]
    assert stats["evictions"] > 0 and seen["held"] > 0
    assert seen["max_leaving"] > 0 and seen["ends"] > 100
    assert stats["overshoots"] == 0 and seen["over"] == 0
    assert stats["leaving_waits"] > 0
