"""Training under a budget gives the same bits as training without one.

Each case runs 5 steps plain, then under deepum on the cpu device at a budget
of at most a third of the unconstrained peak, and asserts identical losses,
parameters and buffers, that pages really moved, and that the budget held.
"""

from __future__ import annotations

import pytest
import torch

from . import models
from .helpers import assert_identical, train, unconstrained_peak

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
    budget = _peak(name, opt) // fraction
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


def test_model_built_inside_the_session():
    """Parameters born inside the session are pages from their first operator."""
    import deepum

    ref = train(models.mlp, models.mlp_batches, models.classify, STEPS)
    budget = _peak("mlp") // 3
    torch.manual_seed(0)
    with deepum.oversubscribe(budget, device="cpu") as session:
        model = models.mlp()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
        losses = []
        for batch in models.mlp_batches()[:STEPS]:
            opt.zero_grad()
            loss = models.classify(model, batch)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    assert losses == ref[0]
    for a, b in zip(ref[1], model.parameters()):
        assert torch.equal(a, b)
    assert session.stats()["evictions"] > 0
