"""Tensors deepum cannot page stay resident, are counted, and are never corrupted."""

import numpy as np
import pytest
import torch

import deepum
from deepum.core.pages import EVICTED, RESIDENT


def test_non_resizable_and_sparse_tensors_stay_put():
    torch.manual_seed(0)
    fixed = torch.from_numpy(np.arange(4096, dtype=np.float32))  # storage not resizable
    indices = torch.tensor([[0, 1, 2], [2, 0, 1]])
    sparse = torch.sparse_coo_tensor(indices, torch.tensor([1.0, 2.0, 3.0]), (3, 3), check_invariants=True)
    weights = [torch.randn(128, 128) for _ in range(32)]

    def work():
        out = []
        for w in weights:
            y = (w @ w) + fixed[:128]
            out.append(float(y.sum()) + float(torch.sparse.mm(sparse, w[:3, :3]).sum()))
        return out

    ref = work()
    with deepum.oversubscribe(1 << 20, device="cpu") as s:  # 1 MiB, the smallest budget
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


def test_an_index_tensor_from_outside_stays_in_for_a_split_taken_before_the_session():
    # [Note: index tensors the host reads]: tensor_split's composite kernel
    # reads its index tensor above the paging mode, and a reference to
    # torch.tensor_split taken before the session is not host access's
    # wrapper. On the cpu tier a small integer tensor from outside stays in.
    split = torch.tensor_split  # taken before the session, as OpInfo's database does
    x = torch.randn(10, 5)
    idx = torch.tensor([2, 5])
    plain = [t.clone() for t in split(x + 1, idx, dim=0)]
    with deepum.oversubscribe(1.0, "cpu", stress=True) as session:
        session.manage(x, idx)
        y = x + 1  # an operator: stress evicts every page it can after it
        pages = session.pager.table.pages
        index_page = pages[torch._C.TensorBase.untyped_storage(idx)._cdata]
        assert index_page.state == RESIDENT and index_page.pins > 0 and index_page.pageable
        assert pages[torch._C.TensorBase.untyped_storage(x)._cdata].state == EVICTED
        got = [t.clone() for t in split(y, idx, dim=0)]
        assert session.stats()["evictions"] > 0
    assert all(torch.equal(a, b) for a, b in zip(got, plain))


def test_host_reads_fault_in_and_numpy_views_stay_valid():
    """tolist(), numpy() and tensor_split's index tensor read host memory without an operator."""
    import numpy as np

    x = torch.randn(10, 5)
    idx = torch.tensor([2, 5])
    plain_split = [t.clone() for t in torch.tensor_split(x, idx, dim=0)]
    with deepum.oversubscribe(1.0, "cpu", stress=True) as session:
        session.manage(x, idx)  # both evicted after every operator from here on
        parts = torch.tensor_split(x, idx, dim=0)
        assert all(torch.equal(a, b) for a, b in zip(parts, plain_split))
        assert x.tolist() == x.clone().tolist()
        y = x * 2
        view = y.numpy()  # shares y's memory from now on
        for _ in range(3):
            x = x + 1  # operators whose stress evictions would free y's memory if it were pageable
        expected = np.array(y.clone().tolist(), dtype=np.float32)
        assert np.array_equal(view, expected)
        stats = session.stats()
    assert stats["unpageable_pages"] >= 1 and stats["evictions"] > 0


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_sparse_csr_argument_on_the_full_path():
    # Output-size estimates are cached by the arguments' strides; a sparse
    # CSR tensor has none (found by the OpInfo sweep: sparse.mm raised).
    torch.manual_seed(0)
    a = torch.randn(8, 8).relu().to_sparse_csr()
    b = torch.randn(8, 4)
    ref = torch.sparse.mm(a, b)
    with deepum.oversubscribe(1 << 30, "cpu", stress=True) as session:
        torch.ones(4).add(1)  # the first eviction starts pressure: the full path from here
        assert session.pager.pressure
        got = torch.sparse.mm(a, b) + 0.0
    assert torch.equal(ref, got)


def _resumable():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024),
                                torch.nn.ReLU(), torch.nn.Linear(1024, 10))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def _resume_and_train(buf, batches, keep: bool = False):
    """A fresh model and optimizer load the checkpoint in ``buf`` (made on this device, as a
    resumed run does), the checkpoint is let go (``keep``: held through training), and the pair
    trains on ``batches``."""
    buf.seek(0)
    ckpt = torch.load(buf)
    model, opt = _resumable()
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    if not keep:
        del ckpt
    losses = []
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    state = [v.clone() for st in opt.state.values() for v in st.values()]
    return losses, [p.detach().clone() for p in model.parameters()], state, opt


def test_a_resumed_optimizers_loaded_state_is_copied_so_it_can_be_paged():
    """[Note: state over storages that cannot be resized]: optimizer.load_state_dict keeps the
    tensors torch.load made on the cpu tier, whose storages cannot be resized, hence never paged
    out; before the next step they are replaced by copies, and the run holds its budget bit for bit."""
    import io

    gen = torch.Generator().manual_seed(4)
    batches = [(torch.randn(256, 512, generator=gen), torch.randint(0, 10, (256,), generator=gen))
               for _ in range(6)]
    model, opt = _resumable()
    for x, y in batches[:2]:
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    ref = _resume_and_train(buf, batches)
    # Parameters, gradients and state take about 27 MB; the loaded state alone is 12.6 MB.
    with deepum.oversubscribe(20 << 20, device="cpu", dormant=False) as s:
        got = _resume_and_train(buf, batches)
        resizable = all(v.untyped_storage().resizable() for st in got[3].state.values() for v in st.values()
                        if v.numel() > 1)
    stats = s.stats()
    assert got[0] == ref[0]
    assert all(torch.equal(a, b) for a, b in zip(got[1] + got[2], ref[1] + ref[2]))
    assert resizable and stats["rehomed_states"] == 12, stats  # two moments of six parameters
    assert stats["evictions"] > 0 and stats["overshoots"] == 0, stats
    # Kept by the program, the loaded state is not copied: a copy would only add its size.
    with deepum.oversubscribe(64 << 20, device="cpu", dormant=False) as s:
        kept = _resume_and_train(buf, batches, keep=True)
    assert kept[0] == ref[0] and s.stats()["rehomed_states"] == 0, s.stats()


def test_memory_it_cannot_page_that_passes_the_budget_is_named_once_and_under_strict(caplog):
    """Loaded tensors the program keeps (the checkpoint itself) cannot be paged out: what passes
    the budget with them is put down to them, in one warning, or in strict's error."""
    fixed = torch.from_numpy(np.ones((3 << 20) // 4, dtype=np.float32))  # 3 MiB no operator can free
    weights = [torch.randn(512, 512) for _ in range(8)]  # 1 MiB each

    def work():  # each product needs 2 MiB at once; 1 MiB is left beside ``fixed``
        return [float((w @ w).sum()) for w in weights]

    ref = work()
    with caplog.at_level("WARNING", logger="deepum"):
        with deepum.oversubscribe(4 << 20, device="cpu", dormant=False) as s:
            s.manage([fixed])
            assert work() == ref and work() == ref
    named = [r for r in caplog.records if "cannot page out" in r.getMessage()]
    assert s.stats()["overshoots"] > 0 and len(named) == 1, [r.getMessage() for r in caplog.records]
    with pytest.raises(deepum.BudgetOvershootError, match="held by tensors deepum cannot page out"):
        with deepum.oversubscribe(4 << 20, device="cpu", dormant=False, strict=True) as s:
            s.manage([fixed])
            work()
    assert torch.equal(fixed, torch.ones_like(fixed))
