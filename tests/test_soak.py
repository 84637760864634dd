"""A long run under a tight budget: nothing grows that should not."""

import resource

import pytest
import torch

import deepum

from . import models
from .helpers import unconstrained_peak


def test_500_steps_stay_flat():
    budget = unconstrained_peak(models.mlp, models.mlp_batches, models.classify, 3) // 3
    torch.manual_seed(0)
    model = models.mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    batches = models.mlp_batches(4)
    samples = []
    with deepum.oversubscribe(budget, device="cpu") as session:
        pager = session.pager
        for step in range(500):
            x, y = batches[step % len(batches)]
            opt.zero_grad(set_to_none=True)
            models.classify(model, (x, y)).backward()
            opt.step()
            if step >= 50 and step % 50 == 0:
                stats = session.stats()
                samples.append((
                    len(pager.table),                    # page table
                    stats["host_bytes"],                 # host copies held (the pool)
                    len(session._mode.eids),             # execution IDs learned
                    len(pager.policy.successors),        # correlation table
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                ))
        final = session.stats()
    first, last = samples[0], samples[-1]
    # Pages go out and come back in all along (faulted, or prefetched by a plan).
    assert final["evictions"] > 1000 and final["faults"] + final["prefetches"] > 1000
    # Tables and host memory stop growing once the step repeats.
    assert last[0] <= first[0] * 1.05 + 8, samples
    assert last[1] <= first[1] * 1.05, samples
    assert last[2] == first[2] and last[3] == first[3], samples
    # Peak RSS (KiB) may creep by allocator noise, not by a leak per step.
    assert last[4] - first[4] < 64 * 1024, samples
    # Dead storages released their host copies: what the pool holds is
    # bounded by what is evicted now plus its free lists, not by history.
    assert final["host_bytes"] < 4 * budget
    assert final["dead_pages"] > 10 * final["managed_pages"]


class _FakeEvent:
    """A CUDA event's surface as CudaTransfers uses it for timing; the device is as far as ``done`` says."""

    made = 0
    done = True

    def __init__(self, enable_timing: bool = False) -> None:
        type(self).made += 1

    def record(self, stream=None) -> None:
        pass

    def query(self) -> bool:
        return type(self).done

    def elapsed_time(self, other) -> float:
        return 1.0  # milliseconds


class _FakeStreams:
    def current(self):
        return None


def _timing_transfers(monkeypatch):
    from deepum.engine import movers

    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(_FakeEvent, "made", 0)
    t = movers.CudaTransfers.__new__(movers.CudaTransfers)  # no streams: only the timing side is used
    t.streams_, t._timed, t._spare = _FakeStreams(), [], []
    t._harvest_at, t.recompute_seconds, t.stall_seconds = movers.HARVEST_AT, 0.0, 0.0
    return t, movers.HARVEST_AT


def test_timed_rebuilds_are_read_without_stats_and_their_events_reused(monkeypatch):
    # [Note: timed spans] in engine/movers.py: a program that never asks for the
    # stats must not keep two CUDA events for every rebuild of the run.
    t, every = _timing_transfers(monkeypatch)
    for _ in range(10_000):
        t.clocked(t.clock(), "recompute_seconds")
    assert len(t._timed) < every
    assert _FakeEvent.made <= 2 * every  # recorded again, not made anew
    t.harvest()
    assert t.recompute_seconds == pytest.approx(10_000 * 1e-3)  # every span counted once


def test_timed_spans_the_device_has_not_reached_are_not_rescanned_at_every_new_one(monkeypatch):
    t, every = _timing_transfers(monkeypatch)
    monkeypatch.setattr(_FakeEvent, "done", False)
    scans = []
    harvest = type(t).harvest
    monkeypatch.setattr(type(t), "harvest", lambda self: (scans.append(len(self._timed)), harvest(self)))
    for _ in range(5_000):
        t.clocked(t.clock(), "recompute_seconds")
    assert len(t._timed) == 5_000 and len(scans) < 10  # the reading point doubles
    monkeypatch.setattr(_FakeEvent, "done", True)
    t.harvest()
    assert t._timed == [] and t.recompute_seconds == pytest.approx(5_000 * 1e-3)
