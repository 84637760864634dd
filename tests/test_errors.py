"""Errors users can cause, and leaving the context by every road: nothing is lost."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import deepum
from deepum.engine import movers as transfer

from . import models
from .helpers import unconstrained_peak

MLP_PEAK = None


# These tests stop the engine at a chosen operator and compare with a plain
# run stopped at the same one: regions' census runs blocks a second time,
# which a plain run does not, so they page without regions (tests/test_regions.py
# has the regions' own error paths).
PAGES_ONLY = {"recompute_blocks": False}


def mlp_budget():
    global MLP_PEAK
    if MLP_PEAK is None:
        MLP_PEAK = unconstrained_peak(models.mlp, models.mlp_batches, models.classify, 3)
    return MLP_PEAK // 3


def snapshot(model, opt):
    out = [p.detach().clone() for p in model.parameters()]
    out += [p.grad.clone() if p.grad is not None else None for p in model.parameters()]
    for state in opt.state.values():
        out += [v.clone() for v in state.values() if isinstance(v, torch.Tensor)]
    return out


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x is None) == (y is None)
        if x is not None:
            assert torch.equal(x, y)


def assert_all_materialized(model, opt):
    for t in [*model.parameters(), *[p.grad for p in model.parameters() if p.grad is not None],
              *[v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]]:
        assert t.untyped_storage().nbytes() >= t.numel() * t.element_size()


def setup():
    torch.manual_seed(0)
    model = models.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, foreach=False)
    return model, opt


def step(model, opt, batch):
    opt.zero_grad()
    models.classify(model, batch).backward()
    opt.step()


class CountingMode(TorchDispatchMode):
    """A plain run that stops with KeyboardInterrupt at operator ``n``."""

    def __init__(self, n):
        super().__init__()
        self.n, self.count = n, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        if self.count == self.n:
            raise KeyboardInterrupt
        return func(*args, **(kwargs or {}))


def plain_interrupted_at(n, steps=3):
    model, opt = setup()
    with pytest.raises(KeyboardInterrupt), CountingMode(n):
        for batch in models.mlp_batches()[:steps]:
            step(model, opt, batch)
    return snapshot(model, opt)


# ------------------------------------------------------------------ budgets

def test_bad_budget_is_refused_before_anything_runs():
    with pytest.raises(deepum.BudgetError, match="cannot be parsed"):
        deepum.oversubscribe("plenty", device="cpu")
    with pytest.raises(deepum.BudgetError, match="positive"):
        deepum.oversubscribe(0, device="cpu")
    with pytest.raises(deepum.BudgetError, match="larger than the device"):
        deepum.oversubscribe("1000TiB", device="cpu")


def test_cuda_asked_for_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    with pytest.raises(deepum.UnsupportedError, match="CUDA is not available"):
        deepum.oversubscribe("1GiB", device="cuda")


def test_budget_below_one_operator_names_it_and_loses_nothing():
    torch.manual_seed(0)
    model = torch.nn.Linear(1024, 1024)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(64, 1024)
    with pytest.raises(deepum.BudgetTooSmallError) as err:
        with deepum.oversubscribe("2MiB", device="cpu"):
            model(x).sum().backward()
    e = err.value
    assert e.op.startswith("aten.") and e.needed >= 1024 * 1024 * 4
    assert e.op in str(e) and "Raise the budget to at least" in str(e)
    # The weight alone passes the budget: a smaller batch would not help, and the message says so.
    assert "split the single parameter of 4.00 MiB" in str(e) and "smaller batch or" not in str(e)
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b)
    # The same work fits a budget the message asked for, plus room to spare.
    with deepum.oversubscribe(4 * e.needed, device="cpu"):
        model(x).sum().backward()


def test_an_optimizer_step_over_the_budget_is_not_told_to_shrink_the_batch():
    """Adam's first step: its state and temporaries are new pages that no kind names yet, and a
    smaller batch shrinks none of them (session 28's sweep of user scenarios)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 1024),
                                torch.nn.GELU(), torch.nn.Linear(1024, 10))
    opt = torch.optim.Adam(model.parameters())
    with pytest.raises(deepum.BudgetTooSmallError) as err:
        with deepum.oversubscribe(10 * 2**20, device="cpu"):
            for _ in range(3):
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(torch.randn(16, 256)), torch.randint(0, 10, (16,)))
                loss.backward()
                opt.step()
    message = str(err.value)
    assert "optimizer operator" in message and "smaller batch or sequence length" not in message, message


def count_ops(monkeypatch):
    """Count operators entering deepum; returns the live counter."""
    from deepum.engine.intercept.mode import PagingMode

    count = {"ops": 0}
    original = PagingMode.__torch_dispatch__

    def counting(self, func, types, args=(), kwargs=None):
        count["ops"] += 1
        return original(self, func, types, args, kwargs)

    monkeypatch.setattr(PagingMode, "__torch_dispatch__", counting)
    return count


def _no_memory(nbytes, pin):
    raise RuntimeError("simulated: cannot allocate host memory")


@pytest.mark.parametrize("where, patch, message", [
    # The allocation itself fails (no pinnable memory left).
    ("_alloc_host", _no_memory, "simulated: cannot allocate"),
    # Pinning would succeed past what the host holds, and the kernel's OOM
    # killer would end the process: the pool asks the system first.
    ("_host_memory", lambda: (1 << 30, 64 << 30), "GiB of host memory is available"),
], ids=["allocation-fails", "nearly-full"])
def test_host_memory_exhausted_mid_eviction(monkeypatch, where, patch, message):
    mlp_budget()  # measured before counting starts
    count = count_ops(monkeypatch)
    monkeypatch.setattr(transfer, where, patch)
    model, opt = setup()
    with pytest.raises(deepum.HostMemoryError, match=f"(?s){message}.*nothing was lost"):
        with deepum.oversubscribe(mlp_budget(), device="cpu", **PAGES_ONLY):
            for batch in models.mlp_batches()[:3]:
                step(model, opt, batch)
    monkeypatch.undo()
    assert_all_materialized(model, opt)
    # The operator that needed room never ran: the state is that of a plain
    # run stopped just before it.
    assert_same(snapshot(model, opt), plain_interrupted_at(count["ops"]))
    with deepum.oversubscribe(mlp_budget(), device="cpu", **PAGES_ONLY) as s:  # usable again
        step(model, opt, models.mlp_batches()[0])
    assert s.stats()["evictions"] > 0


# ------------------------------------------------------------------- exits

def test_normal_exit_leaves_ordinary_tensors():
    model, opt = setup()
    with deepum.oversubscribe(mlp_budget(), device="cpu", **PAGES_ONLY) as s:
        for batch in models.mlp_batches()[:3]:
            step(model, opt, batch)
        inside = s.stats()
    assert inside["evictions"] > 0 and inside["resident_bytes"] <= inside["budget_bytes"]
    assert_all_materialized(model, opt)
    ref_model, ref_opt = setup()
    for batch in models.mlp_batches()[:3]:
        step(ref_model, ref_opt, batch)
    assert_same(snapshot(model, opt), snapshot(ref_model, ref_opt))


def _failing_backward(exc, into: dict):
    """Two steps, then a backward pass that a gradient hook interrupts with ``exc``."""
    model, opt = setup()
    into.update(model=model, opt=opt)
    batches = models.mlp_batches()[:3]
    for batch in batches[:2]:
        step(model, opt, batch)

    def hook(grad):
        raise exc("from a backward hook")

    x, y = batches[2]
    out = model[0](x)
    out.register_hook(hook)
    torch.nn.functional.cross_entropy(model[1:](out), y).backward()


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_exception_in_backward_hook(exc):
    ref, got = {}, {}
    with pytest.raises(exc):
        _failing_backward(exc, ref)
    with pytest.raises(exc):
        with deepum.oversubscribe(mlp_budget(), device="cpu") as s:
            _failing_backward(exc, got)
    assert s.stats()["evictions"] > 0
    assert_all_materialized(got["model"], got["opt"])
    assert_same(snapshot(got["model"], got["opt"]), snapshot(ref["model"], ref["opt"]))


def _ops_in_deepum_run(steps=3):
    model, opt = setup()
    with deepum.oversubscribe(mlp_budget(), device="cpu", **PAGES_ONLY) as s:
        for batch in models.mlp_batches()[:steps]:
            step(model, opt, batch)
    return s.stats()["ops"]


@pytest.mark.parametrize("where", ["before_operator", "mid_eviction", "mid_fault"])
def test_keyboard_interrupt_inside_the_engine(monkeypatch, where):
    """Interrupted anywhere, the engine leaves every tensor as a plain run stopped there."""
    import random

    from deepum.engine.intercept.mode import PagingMode
    from deepum.engine.pager import Pager

    mlp_budget()
    total = _ops_in_deepum_run()
    assert total > 100
    rng = random.Random(1234 + len(where))
    # In the first step nothing is predicted yet, so faults are certain there;
    # later steps are mostly prefetched.
    target = rng.randrange(10, total // 3)
    count = {"ops": 0, "armed": False}
    original = PagingMode.__torch_dispatch__

    def counting(self, func, types, args=(), kwargs=None):
        count["ops"] += 1
        if count["ops"] == target:
            if where == "before_operator":
                raise KeyboardInterrupt
            count["armed"] = True
        try:
            return original(self, func, types, args, kwargs)
        finally:
            if count["ops"] >= total:
                count["armed"] = False  # never interrupt the restore at exit

    monkeypatch.setattr(PagingMode, "__torch_dispatch__", counting)
    interrupted_at = {}
    if where == "mid_eviction":
        original_free = transfer.HostTransfers.free

        def free(self, storage, copied=False):
            if count["armed"]:
                count["armed"] = False
                interrupted_at["op"] = count["ops"]
                raise KeyboardInterrupt  # the copy out is done, the memory not yet freed
            return original_free(self, storage, copied)

        monkeypatch.setattr(transfer.HostTransfers, "free", free)
    elif where == "mid_fault":
        original_fault = Pager.fault

        def fault(self, pages):
            if count["armed"]:
                count["armed"] = False
                interrupted_at["op"] = count["ops"]
                raise KeyboardInterrupt
            return original_fault(self, pages)

        monkeypatch.setattr(Pager, "fault", fault)
    model, opt = setup()
    with pytest.raises(KeyboardInterrupt):
        with deepum.oversubscribe(mlp_budget(), device="cpu", **PAGES_ONLY):
            for batch in models.mlp_batches()[:3]:
                step(model, opt, batch)
    monkeypatch.undo()
    assert_all_materialized(model, opt)
    stop = interrupted_at.get("op", target)
    assert_same(snapshot(model, opt), plain_interrupted_at(stop))


def test_interrupted_restore_can_be_resumed(monkeypatch):

    model, opt = setup()
    ref_model, ref_opt = setup()
    for batch in models.mlp_batches()[:2]:
        step(ref_model, ref_opt, batch)
    original_load = transfer.HostTransfers.load
    calls = {"n": 0}

    def load(self, items, prefetch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original_load(self, items, prefetch)

    session = deepum.oversubscribe(mlp_budget(), device="cpu")
    with pytest.raises(KeyboardInterrupt):
        with session:
            for batch in models.mlp_batches()[:2]:
                step(model, opt, batch)
            # Only the restore at exit loads pages now.
            monkeypatch.setattr(transfer.HostTransfers, "load", load)
    monkeypatch.undo()
    session.restore()
    assert_all_materialized(model, opt)
    assert_same(snapshot(model, opt), snapshot(ref_model, ref_opt))


def test_restore_that_does_not_fit_keeps_the_data(monkeypatch):
    model, opt = setup()
    ref_model, ref_opt = setup()
    for batch in models.mlp_batches()[:2]:
        step(ref_model, ref_opt, batch)
    session = deepum.oversubscribe(mlp_budget(), device="cpu")
    original_load = transfer.HostTransfers.load

    def load(self, items, prefetch):
        raise torch.OutOfMemoryError("simulated: the device is full")

    with pytest.raises(deepum.RestoreError, match="intact in host memory") as err:
        with session:
            for batch in models.mlp_batches()[:2]:
                step(model, opt, batch)
            monkeypatch.setattr(transfer.HostTransfers, "load", load)
    assert err.value.pending > 0
    monkeypatch.setattr(transfer.HostTransfers, "load", original_load)
    session.restore()
    assert_all_materialized(model, opt)
    assert_same(snapshot(model, opt), snapshot(ref_model, ref_opt))
    session.restore()  # idempotent


def test_enable_disable_process_wide():
    model, opt = setup()
    session = deepum.enable(mlp_budget(), device="cpu")
    try:
        assert deepum.current() is session
        with pytest.raises(RuntimeError, match="already enabled"):
            deepum.enable(mlp_budget(), device="cpu")
        for batch in models.mlp_batches()[:2]:
            step(model, opt, batch)
    finally:
        stats = deepum.disable()
    assert deepum.current() is None
    assert stats["evictions"] > 0
    assert_all_materialized(model, opt)
    assert deepum.disable() is None  # not enabled: no run, no stats


def test_session_reenters_after_an_error():
    model, opt = setup()
    with pytest.raises(ValueError):
        with deepum.oversubscribe(mlp_budget(), device="cpu"):
            step(model, opt, models.mlp_batches()[0])
            raise ValueError("user code")
    with deepum.oversubscribe(mlp_budget(), device="cpu") as s:
        step(model, opt, models.mlp_batches()[1])
    assert s.stats()["faults"] > 0


def test_sessions_do_not_nest():
    with deepum.oversubscribe("1GiB", device="cpu"):
        with pytest.raises(deepum.UnsupportedError, match="do not nest"):
            with deepum.oversubscribe("1GiB", device="cpu"):
                pass
        x = torch.ones(4) * 2  # the outer session still works
    assert torch.equal(x, torch.full((4,), 2.0))
    with deepum.oversubscribe("1GiB", device="cpu"):  # and a new one can start
        pass


def _failing_forward(into: dict):
    """Two steps, then a forward pass that a module hook interrupts half way."""
    model, opt = setup()
    into.update(model=model, opt=opt)
    batches = models.mlp_batches()[:3]
    for batch in batches[:2]:
        step(model, opt, batch)

    def boom(module, inputs, output):
        raise ValueError("from a forward hook")

    model[2].register_forward_hook(boom)
    step(model, opt, batches[2])


def test_exception_in_forward():
    ref, got = {}, {}
    with pytest.raises(ValueError):
        _failing_forward(ref)
    with pytest.raises(ValueError):
        with deepum.oversubscribe(mlp_budget(), device="cpu"):
            _failing_forward(got)
    assert_all_materialized(got["model"], got["opt"])
    assert_same(snapshot(got["model"], got["opt"]), snapshot(ref["model"], ref["opt"]))


class HalfwaySGD(torch.optim.Optimizer):
    """Plain SGD that fails after updating half of its parameters."""

    def __init__(self, params):
        super().__init__(params, {"lr": 0.1})

    @torch.no_grad()
    def step(self):
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in enumerate(params):
            if i == len(params) // 2:
                raise RuntimeError("optimizer failed half way")
            p.add_(p.grad, alpha=-0.1)


def test_exception_in_the_optimizer_step():
    def run(into):
        torch.manual_seed(0)
        model = models.mlp()
        opt = HalfwaySGD(model.parameters())
        into.update(model=model, opt=opt)
        models.classify(model, models.mlp_batches()[0]).backward()
        opt.step()

    ref, got = {}, {}
    with pytest.raises(RuntimeError, match="half way"):
        run(ref)
    with pytest.raises(RuntimeError, match="half way"):
        with deepum.oversubscribe(max(mlp_budget() // 2, 1 << 20), device="cpu") as s:
            run(got)
    assert s.stats()["evictions"] > 0
    assert_all_materialized(got["model"], got["opt"])
    assert_same(snapshot(got["model"], got["opt"]), snapshot(ref["model"], ref["opt"]))


_always_oom = None


def _oom_op():
    global _always_oom
    if _always_oom is None:
        @torch.library.custom_op("deepum_test::always_oom", mutates_args=())
        def always_oom(x: torch.Tensor) -> torch.Tensor:
            raise torch.OutOfMemoryError("simulated: the allocator has nothing left")

        @always_oom.register_fake
        def _(x):
            return torch.empty_like(x)

        _always_oom = always_oom
    return _always_oom


def test_out_of_memory_that_eviction_cannot_cure():
    op = _oom_op()
    model, opt = setup()
    ref_model, ref_opt = setup()
    with pytest.raises(deepum.UnmanagedMemoryError, match="cannot evict") as err:
        with deepum.oversubscribe(mlp_budget(), device="cpu") as s:
            step(model, opt, models.mlp_batches()[0])
            op(torch.ones(16))
    assert "deepum_test" in str(err.value)
    assert s.stats()["oom_retries"] > 0  # it evicted and retried before giving up
    step(ref_model, ref_opt, models.mlp_batches()[0])
    assert_all_materialized(model, opt)
    assert_same(snapshot(model, opt), snapshot(ref_model, ref_opt))


def test_a_first_operator_whose_size_is_guessed_reports_what_it_made():
    """An RNN layer's outputs cannot be sized before it runs, so room is made for all there is;
    the smallest budget `deepum estimate` reports is what the layer made, not that guess."""
    torch.manual_seed(0)
    with deepum.oversubscribe(1.0, device="cpu") as session:
        rnn = torch.nn.LSTM(128, 256, batch_first=True)
        rnn(torch.randn(8, 48, 128))[0].sum().backward()
    working = session.stats()["max_working_set_bytes"]
    assert 0 < working < 64 * 2**20, working  # the layer's tensors are a few MiB; the device, gigabytes
