"""Pages dropped and computed again give the same bits as pages copied.

Each test runs a small program plain and under a stress session (every page
evicted after every operator) with recipes for pages of any size, and
checks both the bits and that pages were really dropped and rebuilt. Each
targets one invariant of recompute.py and fails without it.
"""

from __future__ import annotations

import pytest
import torch

import deepum
from deepum.recompute import MAX_DEPTH

from .helpers import assert_identical, train


def _session(**kw):
    return deepum.oversubscribe(1 << 30, "cpu", stress=True, **kw)


def _run(fn, *args, **kw):
    """fn(*args) plain and under a stress session with recipes for every size."""
    ref = fn(*args)
    with _session(**kw) as s:
        s.pager.recompute_min_bytes = 0
        got = fn(*args)
        got = [g.clone() for g in got]
    return ref, got, s.stats()


def _equal(ref, got):
    assert len(ref) == len(got)
    for a, b in zip(ref, got):
        assert torch.equal(a, b)


def _gelu_chain(x, w):
    h = x @ w
    a = h * 0.5
    b = torch.tanh(h) + 1.0
    g = a * b
    return g


def test_elementwise_chain_forward_and_backward():
    torch.manual_seed(0)
    x = torch.randn(64, 128, requires_grad=True)
    w = torch.randn(128, 128, requires_grad=True)

    def step(x, w):
        x.grad = w.grad = None
        out = (_gelu_chain(x, w) @ w).sum()
        out.backward()
        return [out.detach(), x.grad, w.grad]

    ref, got, st = _run(step, x, w)
    _equal(ref, got)
    assert st["drops"] > 0 and st["recomputes"] > 0, st


def test_recompute_off_copies_everything():
    torch.manual_seed(0)
    x, w = torch.randn(64, 128), torch.randn(128, 128)
    ref, got, st = _run(lambda x, w: [_gelu_chain(x, w)], x, w, recompute=False)
    _equal(ref, got)
    assert st["drops"] == 0 and st["recomputes"] == 0 and st["evictions"] > 0, st


def test_a_write_to_an_input_rebuilds_its_dropped_readers_first():
    torch.manual_seed(0)
    x, w = torch.randn(64, 128), torch.randn(128, 128)

    def prog(x, w):
        h = x @ w
        a = h * 2.0  # dropped: its recipe reads h
        h.add_(1.0)  # a must keep h's old bits
        return [a + 0.0, h]

    ref, got, st = _run(prog, x, w)
    _equal(ref, got)
    assert st["drops"] > 0 and st["recomputes"] > 0, st


def test_a_page_written_after_it_was_made_loses_its_recipe():
    torch.manual_seed(0)
    x, w = torch.randn(64, 128), torch.randn(128, 128)

    def prog(x, w):
        h = x @ w
        a = h * 2.0
        a.mul_(3.0)  # a is no longer h * 2
        return [a + 0.0]

    ref, got, st = _run(prog, x, w)
    _equal(ref, got)


def test_a_dropped_page_keeps_its_dead_inputs():
    torch.manual_seed(0)
    x, w = torch.randn(64, 128), torch.randn(128, 128)

    def make(x, w):
        t = x @ w  # dies when make returns
        return torch.sigmoid(t)

    def prog(x, w):
        a = make(x, w)
        junk = [torch.randn(64, 128) for _ in range(4)]  # the allocator would reuse t's memory
        return [a + 0.0, *junk]

    torch.manual_seed(1)
    ref = prog(x, w)
    with _session() as s:
        s.pager.recompute_min_bytes = 0
        torch.manual_seed(1)
        got = [g.clone() for g in prog(x, w)]
        st = s.stats()
    _equal(ref, got)
    assert st["drops"] > 0 and st["recomputes"] > 0, st


def test_chains_longer_than_the_depth_limit_are_copied_beyond_it():
    torch.manual_seed(0)
    x = torch.randn(64, 128)

    def chain(x):
        outs = [x * 1.5]
        for _ in range(3 * MAX_DEPTH):
            outs.append(torch.sigmoid(outs[-1]))
        return outs

    ref = chain(x)
    with _session() as s:
        s.pager.recompute_min_bytes = 0
        outs = chain(x)
        pages = [s.pager.table.get(o.untyped_storage()._cdata) for o in outs]
        dropped = [p.dropped for p in pages]
        # Every page is out (stress); no run of dropped pages is longer than the limit.
        run = longest = 0
        for d in dropped:
            run = run + 1 if d else 0
            longest = max(longest, run)
        assert longest == MAX_DEPTH, dropped
        got = [o + 0.0 for o in outs]
    _equal([o + 0.0 for o in ref], got)


@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_training_with_recipes_is_bit_identical(name):
    from .test_training import CASES, STEPS, _peak

    make_model, make_batches, loss_fn = CASES[name]
    ref = train(make_model, make_batches, loss_fn, STEPS)
    budget = max(_peak(name) // 3, 1 << 20)  # 1 MiB: the smallest budget
    got = train(make_model, make_batches, loss_fn, STEPS, budget=budget)
    assert_identical(ref, got)
    st = got[3]
    assert st["drops"] > 0 and st["recomputes"] > 0, st
    # Each eviction is exactly one of: copied out, dropped clean, dropped to be recomputed.
    assert st["evictions"] == st["writebacks"] + st["dropped_clean"] + st["drops"], st
    assert st["peak_device_bytes"] <= budget



def test_views_with_math_bits_are_not_rebuilt_from_their_storage():
    # clone() of a conjugate view: a view rebuilt from the storage would lose
    # the conjugate bit and the page would come back unconjugated.
    torch.manual_seed(0)
    x = torch.randn(64, 64, dtype=torch.complex64)

    def prog(x):
        h = x * 2.0
        return [h.conj().clone() + 0.0, h._neg_view().clone() + 0.0, h.clone() + 0.0]

    ref, got, st = _run(prog, x)
    _equal(ref, got)
    assert st["drops"] > 0 and st["recomputes"] > 0, st


def test_pages_numpy_can_write_are_not_recipe_inputs():
    np = pytest.importorskip("numpy")
    arr = np.random.default_rng(0).standard_normal((64, 128)).astype(np.float32)
    with _session() as s:
        s.pager.recompute_min_bytes = 0
        x = torch.from_numpy(arr)  # shares arr's memory: written by numpy, unseen
        y = x * 2.0
        expected = torch.from_numpy(arr * 2.0)
        arr[:] = 0.0
        got = y + 0.0  # y was evicted after its operator; it must not be recomputed from zeros
        st = s.stats()
    assert torch.equal(got, expected)
    assert st["evictions"] > 0, st
