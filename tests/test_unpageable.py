"""Tensors deepum cannot page stay resident, are counted, and are never corrupted."""

import numpy as np
import torch

import deepum


def test_non_resizable_and_sparse_tensors_stay_put():
    torch.manual_seed(0)
    fixed = torch.from_numpy(np.arange(4096, dtype=np.float32))  # storage not resizable
    indices = torch.tensor([[0, 1, 2], [2, 0, 1]])
    sparse = torch.sparse_coo_tensor(indices, torch.tensor([1.0, 2.0, 3.0]), (3, 3), check_invariants=True)
    weights = [torch.randn(64, 64) for _ in range(32)]

    def work():
        out = []
        for w in weights:
            y = (w @ w) + fixed[:64]
            out.append(float(y.sum()) + float(torch.sparse.mm(sparse, w[:3, :3]).sum()))
        return out

    ref = work()
    with deepum.oversubscribe(200_000, device="cpu") as s:
        got = work()
        got += work()
    stats = s.stats()
    assert got == ref + ref
    assert stats["unpageable_pages"] >= 1 and stats["evictions"] > 0
    assert torch.equal(fixed, torch.arange(4096, dtype=torch.float32))


def test_zero_tensors_are_not_paged():
    """Autograd's allocation-free zeros (sgn's backward makes one) have no memory to copy.

    (A regression: evicting one read a null pointer and crashed the process.)
    """
    x = torch.randn(20, 20, requires_grad=True)
    (ref,) = torch.autograd.grad(torch.sgn(x).sum(), x)
    y = x.detach().clone().requires_grad_()
    with deepum.oversubscribe(1.0, device="cpu", stress=True) as s:
        s.manage([y])
        (got,) = torch.autograd.grad(torch.sgn(y).sum(), y)
    assert torch.equal(ref, got)
    assert s.stats()["faults"] > 0 and s.stats()["unpageable_pages"] >= 1
