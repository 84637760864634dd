"""Device time of operators, sampled: what the recompute planner charges for a rebuild.

The first few runs of each execution ID are timed (CUDA events on the
compute stream; wall time on the cpu device, where the operator runs
synchronously); later runs are not, so the cost per operator stays one dict
look-up once every ID has its samples. Events are read only once they have
completed, so timing never waits for the device.
"""

from __future__ import annotations

import time

import torch

SAMPLES = 2  # runs timed per execution ID


class OpTimer:
    def __init__(self, device: torch.device, note) -> None:
        """``note(eid, seconds)`` receives each sample (Costs.note_time)."""
        self.cuda = device.type == "cuda"
        self.note = note
        self.taken: dict[int, int] = {}
        self.pending: list[tuple[int, object, object]] = []

    def start(self, eid: int):
        """A token to pass to stop(), or None when this ID has its samples."""
        n = self.taken.get(eid, 0)
        if n >= SAMPLES:
            return None
        self.taken[eid] = n + 1
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return (eid, ev)
        return (eid, time.perf_counter())

    def stop(self, token) -> None:
        eid, t0 = token
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.pending.append((eid, t0, end))
            if len(self.pending) >= 64:
                self.harvest()
        else:
            self.note(eid, time.perf_counter() - t0)

    def harvest(self) -> None:
        keep = []
        for eid, start, end in self.pending:
            if end.query():
                self.note(eid, start.elapsed_time(end) / 1000.0)
            else:
                keep.append((eid, start, end))
        self.pending = keep
