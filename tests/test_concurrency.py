"""Several threads paging through one session: one page table, one budget, one lock."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import deepum

THREADS = 4
STEPS = 6
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# On CUDA the allocator's 2 MiB segments and the budget's reserve need
# tensors of a few MiB; on the cpu device small tensors interleave more.
WIDTH = {"cpu": 48, "cuda": 1024}


def _model(seed: int, device: str = "cpu") -> nn.Module:
    torch.manual_seed(seed)
    w = WIDTH[device]
    # Many tensors, short operators: threads interleave often.
    return nn.Sequential(*[nn.Sequential(nn.Linear(w, w), nn.Tanh()) for _ in range(16)],
                         nn.Linear(w, 4)).to(device)


def _train(model: nn.Module, seed: int, device: str = "cpu") -> list[float]:
    g = torch.Generator().manual_seed(100 + seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
    w = WIDTH[device]
    losses = []
    for _ in range(STEPS):
        x = torch.randn(16, w, generator=g).to(device)
        y = torch.randint(0, 4, (16,), generator=g).to(device)
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _plain(device):
    out = []
    for i in range(THREADS):
        m = _model(i, device)
        out.append((_train(m, i, device), [p.detach().cpu() for p in m.parameters()]))
    # Segments the reference left half-used would count in the paged run's
    # max_memory_reserved: the session cannot shrink memory reserved before it.
    del m
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stress", [False, True], ids=["budget", "stress"])
def test_threads_share_a_session_bit_identically(stress, device):
    """On CUDA, backward also runs on the autograd device thread while copies are in flight."""
    ref = _plain(device)
    footprint = sum(p.numel() * 4 * 4 for p in _model(0, device).parameters())  # params, grads, 2 states
    # On CUDA each thread gets its own cuBLAS workspace (tens of MiB), memory
    # outside any page: the reserve keeps it out of the pages' share.
    reserve = THREADS * (48 << 20) if device == "cuda" else 0
    budget = max(THREADS * footprint // 4, 1 << 20) + reserve  # 1 MiB: the smallest budget
    results: list = [None] * THREADS
    errors: list = []
    with deepum.oversubscribe(budget, device, stress=stress, reserve=reserve) as session:
        # Built under the session, in the main thread: the pages start managed.
        models = [_model(i, device) for i in range(THREADS)]
        start = threading.Barrier(THREADS)

        def work(i):
            try:
                with session.attach():
                    start.wait()
                    results[i] = _train(models[i], i, device)
            except BaseException as e:  # reported below, not lost in the thread
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        session.pager.table.check()
    assert not errors, errors
    stats = session.stats()
    assert stats["evictions"] > 0 and stats["faults"] > 0
    assert stats["peak_device_bytes"] <= budget
    for i in range(THREADS):
        assert results[i] == ref[i][0]
        assert all(torch.equal(a.cpu(), b) for a, b in zip(models[i].parameters(), ref[i][1]))


def test_attach_needs_an_active_session():
    session = deepum.oversubscribe(1.0, "cpu")
    with pytest.raises(RuntimeError, match="active session"):
        with session.attach():
            pass
