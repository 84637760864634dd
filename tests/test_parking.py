"""Parking: optimizer state on the host between optimizer steps ([Note: parking] in core/regions.py,
[Note: a parked state entry] in engine/parking.py)."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch

import deepum
from deepum.core.regions import NONE, WHOLE, Census, RegionPlan
from deepum.engine.parking import Parking
from deepum.engine.parkslice import SlicedStep
from deepum.engine.parkstep import ParkedStep, pipeline_schedule
from deepum.engine.telemetry import Stats

from .helpers import assert_identical, flush_every_window, train

# ------------------------------------------------------------ the plan


def _plan(parkable: int) -> RegionPlan:
    plan = RegionPlan(budget=1000, target=0.8, rounds=3, release=0.9)
    plan.take_census([Census(100, 1.0)] * 4)  # every region whole frees 300
    plan.parkable = parkable
    return plan


def _windows(plan: RegionPlan, *step_peaks: int) -> RegionPlan:
    """Settled windows whose forward fits, one per step peak, in order."""
    for peak in step_peaks:
        plan.settling = 0
        plan.window(forward_peak=650, step_peak=peak)
    return plan


def _parked(parkable: int = 600, margin: int = 50) -> RegionPlan:
    """A plan with every region whole and state parked after its first window (200 parked)."""
    plan = _plan(parkable)
    plan.park_margin = margin
    plan.window(forward_peak=1250)
    return plan


def test_plan_parks_what_every_region_whole_leaves_over():
    plan = _plan(parkable=200)
    changes = plan.window(forward_peak=1250)  # 450 over the target of 800: 150 more than the regions free
    assert changes == dict.fromkeys(range(4), WHOLE) and plan.park == 150


def test_plan_leaves_the_step_to_the_page_planner_when_parking_cannot_cover_it():
    plan = _plan(parkable=100)
    assert plan.window(forward_peak=1250) == {} and plan.park == 0 and plan.done


def test_plan_does_not_park_where_the_optimizer_step_alone_would_not_fit():
    plan = _plan(parkable=200)
    plan.step_floor = 950  # parameters, gradients and all the state: over the release share (900)
    assert plan.window(forward_peak=1250) == {} and plan.park == 0 and plan.done


def test_plan_parks_more_while_the_step_is_over_then_drops_everything():
    plan = _plan(parkable=200)
    plan.window(forward_peak=1250)
    plan.settling = 0
    assert plan.window(forward_peak=650, step_peak=940) == {} and plan.park == 190  # 40 over the release share (the forward fits)
    plan.settling = 0
    plan.window(forward_peak=650, step_peak=915)  # (down 25 for the 40 parked: more than a quarter)
    assert plan.park == 200  # all there is
    plan.settling = 0
    plan.window(forward_peak=650, step_peak=910)
    assert plan.dropped and plan.chosen == {} and plan.park == 0


def test_plan_parks_a_margin_past_what_a_window_showed_over():
    # A paging step's demand falls only a little with each change: parking
    # just what a window showed over would creep up by a few bytes a
    # window, paging all the while.
    plan = _plan(parkable=400)
    plan.park_margin = 50
    plan.window(forward_peak=1250)  # 150 short
    assert plan.park == 200
    plan.settling = 0
    plan.window(forward_peak=650, step_peak=1020)  # 120 over the release share: more than the margin
    assert plan.park == 320
    plan.settling = 0
    plan.window(forward_peak=650, step_peak=905)  # 5 over
    assert plan.park == 370


def test_plan_drops_parking_whose_changes_do_not_lower_the_window():
    # A measure that does not follow what is parked (session 26: a planned
    # window read the allocator's peak, the limit and more, whatever was
    # parked) would park a margin more every few windows, paging all along.
    plan = _windows(_parked(), 960)  # 60 over
    assert plan.park == 260 and not plan.dropped
    _windows(plan, 955)  # down 5 for the 60 parked: one weak change is let pass
    assert plan.park == 315 and not plan.dropped
    _windows(plan, 950)  # down 5 for 55 more: the second in a row
    assert plan.dropped and plan.chosen == {} and plan.park == 0


def test_plan_parks_on_after_a_weak_change_that_the_next_one_makes_up_for():
    plan = _windows(_parked(), 960, 955, 920)  # weak, then down 35 for 55: the measure follows
    assert not plan.dropped and plan.park == 365


def test_plan_weighs_parking_afresh_after_a_window_that_fits():
    plan = _windows(_parked(), 960, 955, 880)  # weak, then a window that fits
    plan.window(forward_peak=650, step_peak=990)  # a longer batch: over again, nothing to weigh it against
    assert not plan.dropped and plan.park == 405
    _windows(plan, 985)  # weak: the first since the window that fit
    assert not plan.dropped


def test_plan_parks_more_for_a_flushing_step_only_with_every_region_whole_and_state_parked():
    plan = _plan(parkable=400)
    plan.park_margin = 50
    assert plan.park_more() == 0  # nothing parked: regions are the plan's first answer
    plan.window(forward_peak=1250)  # every region whole, 150 parked past the margin's 50
    assert plan.park == 200 and plan.park_more() == 50 and plan.park == 250
    plan.park = 380
    assert plan.park_more() == 20 and plan.park_more() == 0  # (all there is)


def test_plan_measures_the_step_against_the_limit_where_it_is_under_the_release_share():
    plan = RegionPlan(budget=1000, target=0.8, rounds=3, release=0.9, limit=850)
    plan.take_census([Census(100, 1.0)] * 4)
    plan.parkable = 200
    assert plan.stop_bytes == 850
    plan.window(forward_peak=1100)  # 300 over the target: every region whole frees it, nothing parked
    assert plan.park == 0
    plan.settling = 0
    assert plan.window(forward_peak=650, step_peak=880) == {} and plan.park == 30  # under 900, 30 over the limit
    plan.settling = 0
    plan.window(forward_peak=650, step_peak=840)  # fits: nothing more
    assert plan.park == 30 and not plan.dropped


def test_plan_does_not_park_where_the_optimizer_step_alone_would_not_fit_within_the_limit():
    plan = RegionPlan(budget=1000, target=0.8, rounds=3, release=0.9, limit=850)
    plan.take_census([Census(100, 1.0)] * 4)
    plan.parkable, plan.step_floor = 200, 870  # under the release share, over the limit
    assert plan.window(forward_peak=1250) == {} and plan.park == 0 and plan.done


def test_plan_does_not_lower_regions_while_state_is_parked():
    plan = _plan(parkable=200)
    plan.window(forward_peak=1250)
    assert plan.lower(step_peak=0) == {} and plan.lowered and plan.chosen == dict.fromkeys(range(4), WHOLE)
    free = _plan(parkable=200)
    free.window(forward_peak=1100)  # 300 over: the regions free it, nothing parked
    assert free.park == 0 and NONE in free.lower(step_peak=500).values()


# ------------------------------------------------------------ the engine


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    return LlamaForCausalLM(LlamaConfig(num_hidden_layers=6, hidden_size=128, intermediate_size=352,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                                        max_position_embeddings=128, tie_word_embeddings=False))


def _batches():
    g = torch.Generator().manual_seed(3)
    return [torch.randint(1, 512, (4, 64), generator=g) for _ in range(16)]


def _lm(model, ids):
    return model(input_ids=ids, labels=ids).loss


def _adamw(params):
    # One parameter at a time: the foreach step's temporaries, the size of
    # every parameter, would pass the budget at the step (CUDA's fused step has none).
    return torch.optim.AdamW(params, lr=1e-3, foreach=False)


def _budget(share: float, make=_llama, batches=_batches) -> int:
    *_, stats = train(make, batches, _lm, steps=2, opt=_adamw, budget=1.0, dormant=False,
                      recompute_blocks=False)
    return int(stats["peak_managed_bytes"] * share)


@pytest.mark.parametrize("share", [0.75, 0.5])
def test_a_model_state_too_large_for_regions_alone_parks_its_optimizer_state_and_keeps_every_bit(share):
    """At 0.5 all of the state back at once would leave parameters, gradients and state over
    the budget's release share: the step runs over the parked state in slices instead."""
    ref = train(_llama, _batches, _lm, steps=16, opt=_adamw)
    each: list = []
    got = train(_llama, _batches, _lm, steps=16, opt=_adamw, budget=_budget(share), each_step=each)
    assert_identical(ref, got)
    stats = got[3]
    assert stats["parked_bytes"] > 0 and stats["regions"] >= 2, stats
    # Parked, the step fits: paging stopped and nothing moved in the last steps.
    assert stats["paging_stops"] >= 1 and stats["paging_starts"] == 0, stats
    assert all(e["evictions"] == 0 and e["parked_bytes"] > 0 for e in each[-3:]), each[-3:]


def test_a_foreach_step_runs_sliced_parks_and_keeps_every_bit():
    """CUDA's default AdamW (foreach): run a slice of parameters at a time ([Note: a sliced
    optimizer step]), its temporaries are one slice's, so at half the peak it parks and
    stops paging where under ParkedStep its step alone stayed over the limit."""
    def foreach(params):
        return torch.optim.AdamW(params, lr=1e-3, foreach=True)

    ref = train(_llama, _batches, _lm, steps=16, opt=foreach)
    each: list = []
    got = train(_llama, _batches, _lm, steps=16, opt=foreach, budget=_budget(0.5), each_step=each)
    assert_identical(ref, got)
    stats = got[3]
    assert stats["parked_bytes"] > 0 and stats["paging_stops"] >= 1, stats
    assert all(e["evictions"] == 0 and e["parked_bytes"] > 0 for e in each[-3:]), each[-3:]


def test_a_parked_step_that_keeps_flushing_the_allocators_cache_parks_more(monkeypatch):
    flush_every_window(monkeypatch)
    ref = train(_llama, _batches, _lm, steps=16, opt=_adamw)
    each: list = []
    watches: list = []
    got = train(_llama, _batches, _lm, steps=16, opt=_adamw, budget=_budget(0.5), each_step=each,
                watches=watches)
    assert_identical(ref, got)
    assert got[3]["paging_stops"] >= 1 and got[3]["paging_starts"] == 0, got[3]
    dormant = [e["parked_bytes"] for e in each if e["evictions"] == 0 and e["parked_bytes"] > 0]
    assert dormant and dormant[-1] > dormant[0], [e["parked_bytes"] for e in each]
    goals = [g for _, g in watches[0].regions.park_goals]  # (the bench rows carry them)
    assert len(goals) >= 2 and goals == sorted(goals), goals


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    return GPT2LMHeadModel(GPT2Config(n_layer=6, n_embd=128, n_head=4, vocab_size=512, n_positions=128))


@pytest.mark.parametrize("make,batch,share", [(_llama, 16, 0.5), (_gpt2, 4, 0.75)], ids=["llama", "gpt2"])
def test_a_step_that_fits_with_regions_stops_paging_without_parking(make, batch, share):
    """Regions alone bring this step under the budget; the page planner still moved pages
    while it settled (it keeps a headroom), and that alone is no reason to park or to page on."""
    g = torch.Generator().manual_seed(5)
    big = [torch.randint(1, 512, (batch, 64), generator=g) for _ in range(12)]
    ref = train(make, lambda: big, _lm, steps=12, opt=_adamw)
    got = train(make, lambda: big, _lm, steps=12, opt=_adamw, budget=_budget(share, make, lambda: big))
    assert_identical(ref, got)
    stats = got[3]
    assert stats["regions"] >= 2 and stats["evictions"] > 0, stats
    assert stats["paging_stops"] >= 1 and stats["parked_bytes"] == 0, stats


def test_parked_state_is_real_data_between_steps():
    """What a script does with the optimizer between steps sees the state's values (on the host)."""
    budget = _budget(0.75)

    def run(session_budget):
        torch.manual_seed(0)
        states = []
        session = deepum.oversubscribe(session_budget, device="cpu") if session_budget else None
        with session or contextlib.nullcontext():
            model = _llama()
            opt = _adamw(model.parameters())
            for ids in _batches():
                opt.zero_grad(set_to_none=True)
                _lm(model, ids).backward()
                opt.step()
                buf = io.BytesIO()
                torch.save(opt.state_dict(), buf)  # as a checkpoint inside the loop would
                buf.seek(0)
                states.append(torch.load(buf))
        return states, session.stats() if session else None

    ref, _ = run(None)
    got, stats = run(budget)
    assert stats["parked_bytes"] > 0, stats
    for a, b in zip(ref, got):
        for pa, pb in zip(a["state"].values(), b["state"].values()):
            for key in pa:
                assert torch.equal(pa[key], pb[key].to(pa[key].device)), key


class _Toy(torch.optim.Optimizer):
    """Two state tensors a parameter, written by the step."""

    def __init__(self, params):
        super().__init__(params, {})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state[p]
                if not st:
                    st["m"] = torch.zeros_like(p)
                    st["v"] = torch.ones_like(p)
                st["m"].add_(1)
                st["v"].mul_(2)
                p.add_(st["m"])


def test_an_entry_the_program_replaces_while_parked_keeps_the_programs_value():
    parking = Parking(torch.device("cpu"), Stats())
    try:
        p = torch.nn.Parameter(torch.zeros(64))
        opt = _Toy([p])
        opt.step()  # the state is made; the post-hook sees the optimizer
        parking.set_goal(1 << 20)
        opt.step()  # parked after this step
        st = opt.state[p]
        assert len(parking.parked) == 2 and torch.equal(st["m"], torch.full((64,), 2.0))
        mine = st["m"] = torch.full((64,), 10.0)  # as load_state_dict would
        opt.step()
        # The step wrote the program's tensor, not a copy of the parked one.
        assert torch.equal(mine, torch.full((64,), 11.0)) and torch.equal(st["m"], mine)
        assert torch.equal(st["v"], torch.full((64,), 8.0))
    finally:
        parking.close()
    assert torch.equal(opt.state[p]["v"], torch.full((64,), 8.0))


def test_closing_brings_every_parked_entry_back():
    parking = Parking(torch.device("cpu"), Stats())
    p = torch.nn.Parameter(torch.zeros(64))
    opt = _Toy([p])
    opt.step()
    parking.set_goal(1 << 20)
    opt.step()
    hosts = {e.host.data_ptr() for e in parking.parked}
    assert hosts
    parking.close()
    assert not parking.parked and not parking.hooks
    assert all(t.data_ptr() not in hosts for t in opt.state[p].values())
    assert torch.equal(opt.state[p]["m"], torch.full((64,), 2.0))


@pytest.mark.parametrize("goal", [0, 256])
def test_a_goal_parks_that_many_bytes_of_state(goal):
    parking = Parking(torch.device("cpu"), Stats())
    try:
        p = torch.nn.Parameter(torch.zeros(64))  # 256 bytes a state tensor
        opt = _Toy([p])
        opt.step()
        parking.set_goal(goal)
        opt.step()
        assert sum(e.host.nbytes for e in parking.parked) == goal
        assert parking.parkable() == 512
    finally:
        parking.close()




def test_looking_for_state_to_park_faults_no_page_in():
    """The scan reads storages through TensorBase: host access's wrapper of ``untyped_storage``
    would fault evicted state back in (and did: it moved a paging step's pages)."""
    from torch.utils._python_dispatch import _disable_current_modes

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))
    with deepum.oversubscribe(1 << 30, device="cpu", dormant=False) as session:
        parking = Parking(torch.device("cpu"), Stats())
        try:
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
            for _ in range(2):
                model(torch.randn(8, 64)).sum().backward()
                opt.step()
            with _disable_current_modes(), session.pager.lock:
                session.pager.evict_unpinned()
            before = session.stats()
            assert before["evictions"] > 0
            state_bytes = sum(t.nbytes for st in opt.state.values() for t in st.values() if t.numel() > 1)
            assert parking.parkable() == state_bytes  # paged out, it is the device's still
            assert session.stats()["faults"] == before["faults"], "the scan faulted pages in"
        finally:
            parking.close()


# ------------------------------------------------------------ the step over parked state


def _stepped(make_opt, parked_step: bool, cap: int = 1 << 30):
    torch.manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(n)) for n in (64, 300, 17, 256)]
    opt = make_opt(params)
    for _ in range(2):  # state made, then a step over it
        for p in params:
            p.grad = torch.randn_like(p)
        if parked_step and opt.state:
            parked = {}
            for st in opt.state.values():
                for k, v in list(st.items()):
                    if isinstance(v, torch.Tensor) and v.numel() > 1:
                        st[k] = v.clone()  # another tensor: the "host buffer"
                        parked[id(st[k])] = st[k]
            mode = ParkedStep(torch.device("cpu"), parked, cap)
            with mode:
                opt.step()
            assert mode.runs > 0
            return params, opt, mode
        opt.step()
    return params, opt, None


@pytest.mark.parametrize("make_opt", [
    lambda ps: torch.optim.AdamW(ps, lr=1e-2, fused=True),
    lambda ps: torch.optim.AdamW(ps, lr=1e-2, foreach=True),
    lambda ps: torch.optim.AdamW(ps, lr=1e-2, foreach=False, amsgrad=True),
    lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, foreach=True),
], ids=["adamw-fused", "adamw-foreach", "adamw-single-amsgrad", "sgd-foreach"])
def test_a_step_over_parked_state_gives_the_bits_of_the_plain_step_a_slice_at_a_time(make_opt):
    """[Note: a step over parked state]: slices of the lists, written arguments copied back."""
    ref_params, ref_opt, _ = _stepped(make_opt, parked_step=False)
    params, opt, mode = _stepped(make_opt, parked_step=True, cap=1500)  # a few tensors a slice
    for a, b in zip(ref_params, params):
        assert torch.equal(a, b)
    for a, b in zip(ref_opt.state.values(), opt.state.values()):
        for k in a:
            assert torch.equal(a[k], b[k]), k
    assert any(id(v) in mode.parked for st in opt.state.values() for v in st.values())  # still the host buffers
    assert mode.runs > 1  # the fused and foreach lists ran in slices (the single-tensor step: an operator each)


def test_a_view_of_parked_state_in_the_step_says_what_to_do():
    from deepum.errors import UnsupportedError
    buf = torch.randn(8)
    with pytest.raises(UnsupportedError, match="recompute_blocks=False"):
        with ParkedStep(torch.device("cpu"), {id(buf): buf}, 1 << 20):
            buf.view(2, 4)
    assert buf.add(1).shape == (8,)  # the mode is gone


def _alive_at_most(n: int, pipeline: int, carried: int) -> tuple[int, list[int], list[int]]:
    """Walk a pipelined operator's schedule: the most slices holding memory at once, the
    order of its runs, and the slices it leaves copying back to the next operator."""
    alive, most, runs, freed = carried, carried, [], set()
    staged: set[int] = set()
    for action, j in pipeline_schedule(n, pipeline, carried):
        if action == "in":
            assert j not in staged and j >= 0
            staged.add(j)
            alive += 1
        elif action == "run":
            assert j in staged and j not in runs
            runs.append(j)
        else:
            assert j < 0 or j in runs, (j, runs)  # what is freed has run (or came from before)
            assert j not in freed
            freed.add(j)
            alive -= 1
        most = max(most, alive)
    left = [j for j in range(-carried, n) if j not in freed]
    return most, runs, left


@pytest.mark.parametrize("n", [1, 2, 5, 40])
@pytest.mark.parametrize("pipeline", [3, 6, 9])
def test_a_pipelined_operator_holds_at_most_its_pipeline_of_slices(n, pipeline):
    carried = 0
    for _ in range(4):  # operators one after another, each carrying what the last left
        most, runs, left = _alive_at_most(n, pipeline, carried)
        assert most <= pipeline, most
        assert runs == list(range(n))
        carried = len(left)
    assert carried <= pipeline
    most, runs, left = _alive_at_most(n, pipeline, pipeline)
    assert most <= pipeline and runs == list(range(n))
    # What is left copying back is this operator's last slices (and perhaps the two
    # carried in, where it had too few slices to free them): the next one frees them first.
    mine = [j for j in left if j >= 0]
    assert mine == list(range(n - len(mine), n)) and len(left) - len(mine) <= 2, left


def test_a_pipelined_operator_copies_slices_in_ahead_of_the_one_running():
    order = list(pipeline_schedule(20, 6))
    # All but two of six slices are in before the first runs, the next as it starts, and
    # each later one goes in before the one four before it runs (the link copies while
    # the step computes).
    assert order[:5] == [("in", 0), ("in", 1), ("in", 2), ("in", 3), ("in", 4)]
    for j in range(5, 20):
        assert order.index(("in", j)) < order.index(("run", j - 4))


def _sliced(make_opt, cap: int):
    """Like _stepped, the second step run sliced (engine/parkslice.py) over cloned ("host") state."""
    torch.manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(n)) for n in (64, 300, 17, 256)]
    opt = make_opt(params)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    for p in params:
        p.grad = torch.randn_like(p)
    parked = {}
    for st in opt.state.values():
        for k, v in list(st.items()):
            if isinstance(v, torch.Tensor) and v.numel() > 1:
                st[k] = v.clone()
                parked[id(st[k])] = st[k]
    step = SlicedStep(torch.device("cpu"), parked, cap, 6)
    saved = step.run(opt, {})
    assert all(not g["params"] for g in opt.param_groups)  # the program's own call steps nothing
    opt.step()
    for g, ps in zip(opt.param_groups, saved):
        g["params"] = ps
    return params, opt, step, parked


@pytest.mark.parametrize("make_opt", [
    lambda ps: torch.optim.AdamW(ps, lr=1e-2, foreach=True),
    lambda ps: torch.optim.AdamW(ps, lr=1e-2, foreach=False, amsgrad=True),
    lambda ps: torch.optim.Adam([{"params": ps[:2]}, {"params": ps[2:], "lr": 1e-3}], lr=1e-2, foreach=True),
    lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, foreach=True),
    lambda ps: torch.optim.RMSprop(ps, lr=1e-2, momentum=0.5, foreach=False),
], ids=["adamw-foreach", "adamw-single-amsgrad", "adam-two-groups", "sgd-foreach", "rmsprop-single"])
def test_a_sliced_step_gives_the_bits_of_the_plain_step_and_copies_each_entry_once(make_opt):
    """[Note: a sliced optimizer step]: the optimizer's own step over a few parameters at a time."""
    ref_params, ref_opt, _ = _stepped(make_opt, parked_step=False)
    params, opt, step, parked = _sliced(make_opt, cap=1500)  # a few tensors a slice
    for a, b in zip(ref_params, params):
        assert torch.equal(a, b)
    for a, b in zip(ref_opt.state.values(), opt.state.values()):
        for k in a:
            assert torch.equal(a[k], b[k]), k
    assert all(id(v) in parked for st in opt.state.values() for v in st.values() if v.numel() > 1)
    total = sum(h.nbytes for h in parked.values())
    assert step.runs > 1 and step.moved == [total, total], (step.runs, step.moved, total)


def test_a_sliced_step_over_state_parked_in_part_keeps_each_slice_within_its_cap():
    """Parameters with nothing parked are sliced too: a foreach step's temporaries are the size of
    the slice's parameters, and the step's floor counts one slice's (Parking.step_floor)."""
    sliced: list[int] = []

    class Recording(torch.optim.AdamW):
        def step(self, closure=None):
            sliced.append(sum(p.nbytes for g in self.param_groups for p in g["params"]))
            return torch.optim.AdamW.step.__wrapped__(self, closure)

    torch.manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(n)) for n in (64, 300, 17, 256, 128, 128, 200)]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt, ref_opt = Recording(params, lr=1e-2, foreach=True), torch.optim.AdamW(ref, lr=1e-2, foreach=True)
    for _ in range(2):
        for r in ref:
            r.grad = torch.ones_like(r)
        ref_opt.step()
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    st = opt.state[params[0]]  # only the first parameter's state parked
    parked = {}
    for k, v in list(st.items()):
        if v.numel() > 1:
            st[k] = v.clone()
            parked[id(st[k])] = st[k]
    sliced.clear()
    step = SlicedStep(torch.device("cpu"), parked, 1500, 6)
    saved = step.run(opt, {})
    for g, ps in zip(opt.param_groups, saved):
        g["params"] = ps
    assert len(sliced) > 2 and max(sliced) <= 1500, sliced
    assert sum(sliced) == sum(p.nbytes for p in params)  # every parameter stepped once
    for a, b in zip(ref, params):
        assert torch.equal(a, b)


def test_a_step_runs_sliced_only_where_nothing_could_tell():
    import torch.optim.optimizer as hooks

    from deepum.engine.parkslice import sliceable
    ps = [torch.nn.Parameter(torch.randn(4))]
    handle = hooks.register_optimizer_step_pre_hook(lambda *a: None)
    try:
        mine = handle.id
        adamw = torch.optim.AdamW(ps, foreach=True)
        assert sliceable(adamw, (adamw,), {}, mine)
        assert not sliceable(adamw, (adamw, lambda: 0.0), {}, mine)  # a closure runs before the update
        assert not sliceable(torch.optim.AdamW(ps, fused=True), (adamw,), {}, mine)  # one operator already
        assert not sliceable(torch.optim.LBFGS(ps), (adamw,), {}, mine)
        later = hooks.register_optimizer_step_pre_hook(lambda *a: None)
        assert not sliceable(adamw, (adamw,), {}, mine)  # it would run after the update
        later.remove()
        own = adamw.register_step_pre_hook(lambda *a: None)
        assert not sliceable(adamw, (adamw,), {}, mine)
        own.remove()
        assert sliceable(adamw, (adamw,), {}, mine)
    finally:
        handle.remove()


def test_parked_entries_are_not_taken_for_state_over_storages_that_cannot_be_resized():
    """On the cpu tier a parked entry's host buffer sits in the state dict, on the session's
    device, over a storage that cannot be resized: the look for loaded state ([Note: state over
    storages that cannot be resized] in api/kinds.py) leaves it parked."""
    import torch.optim.optimizer as optimizer_hooks

    watches: list = []

    def new_unpageable_memory(optimizer, args, kwargs):  # (before the session's own hook)
        for w in watches:
            w.pager.counters.unpageable_pages += 1

    hook = optimizer_hooks.register_optimizer_step_pre_hook(new_unpageable_memory)
    try:
        ref = train(_llama, _batches, _lm, steps=16, opt=_adamw)
        got = train(_llama, _batches, _lm, steps=16, opt=_adamw, budget=_budget(0.5), watches=watches)
    finally:
        hook.remove()
    assert_identical(ref, got)
    stats = got[3]
    assert stats["parked_bytes"] > 0 and stats["rehomed_states"] == 0, stats
