"""Train a model twice, plain and under deepum, and compare every bit."""

from __future__ import annotations

from collections.abc import Callable

import torch

import deepum


def train(make_model: Callable[[], torch.nn.Module], make_batches: Callable[[], list],
          loss_fn: Callable, steps: int = 5, opt: Callable | None = None,
          budget: int | None = None, each_step: list | None = None, watches: list | None = None,
          **session_options):
    """Return (losses, parameters, buffers, stats) of ``steps`` training steps.

    ``each_step``: a list that gets, under a budget, each step's change in the
    session's stats (the counters: numbers only); ``watches``: a list that
    gets the session's watch (engine/watch.py), which outlives the session.
    """
    torch.manual_seed(0)
    model = make_model()
    batches = make_batches()[:steps]
    optimizer = (opt or (lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True)))(model.parameters())
    losses = []

    def loop(session=None):
        before = session.stats() if session is not None and each_step is not None else None
        for batch in batches:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model, batch)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach().clone())
            if before is not None:
                now = session.stats()
                each_step.append({k: v - before[k] for k, v in now.items()
                                  if isinstance(v, (int, float)) and isinstance(before.get(k), (int, float))})
                before = now

    stats = None
    if budget is None:
        loop()
    else:
        with deepum.oversubscribe(budget, device="cpu", **session_options) as session:
            if watches is not None:
                watches.append(session._watch)
            loop(session)
        stats = session.stats()
    params = [p.detach().clone() for p in model.parameters()]
    buffers = [b.detach().clone() for b in model.buffers()]
    return [float(x) for x in losses], params, buffers, stats


def unconstrained_peak(make_model, make_batches, loss_fn, steps, opt=None) -> int:
    """Peak managed bytes of a run whose budget never binds."""
    *_, stats = train(make_model, make_batches, loss_fn, steps, opt, budget=1.0)
    assert stats["evictions"] == 0
    return stats["peak_managed_bytes"]


def assert_identical(ref, got):
    losses0, params0, buffers0, _ = ref
    losses1, params1, buffers1, _ = got
    assert losses0 == losses1, (losses0, losses1)
    assert len(params0) == len(params1)
    for a, b in zip(params0, params1):
        assert torch.equal(a, b)
    for a, b in zip(buffers0, buffers1):
        assert torch.equal(a, b)


def flush_every_window(monkeypatch) -> None:
    """Make the cpu tier's allocator signal count one cache flush at every window (it has no
    cache to flush), as a CUDA step at its allocator's cap does."""
    from deepum.engine import memsignal

    close = memsignal.CpuSignal.close_window

    def flushing(self):
        self.flushes += 1
        return close(self)

    monkeypatch.setattr(memsignal.CpuSignal, "close_window", flushing)
