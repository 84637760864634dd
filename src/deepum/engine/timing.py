"""Device time of operators, sampled: what the recompute planner charges for a rebuild.

The first few runs of each execution ID are timed with CUDA events on the
compute stream; later runs are not, so the cost per operator stays one dict
look-up once every ID has its samples. Events are read only once they have
completed, so timing never waits for the device. The cpu tier is not timed:
its operators would be priced at CPU speed against a memcpy "link", and CI
is meant to take the decisions a GPU would, so there the costs fall back to
the bytes an operator makes (core/costs.py, [Note: fallback cost]).
"""

from __future__ import annotations

import torch

SAMPLES = 3  # runs timed per execution ID


class OpTimer:
    def __init__(self, device: torch.device, note) -> None:
        """``note(eid, seconds)`` receives each sample (Costs.note_time)."""
        self.cuda = device.type == "cuda"
        self.note = note
        self.taken: dict[int, int] = {}
        self.pending: list[tuple[int, object, object]] = []

    def start(self, eid: int):
        """A token to pass to stop(), or None when this ID has its samples (or nothing is timed)."""
        if not self.cuda:
            return None
        n = self.taken.get(eid, 0)
        if n >= SAMPLES:
            return None
        self.taken[eid] = n + 1
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return (eid, ev)

    def stop(self, token) -> None:
        eid, start = token
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self.pending.append((eid, start, end))
        if len(self.pending) >= 64:
            self.harvest()

    def harvest(self) -> None:
        keep = []
        for eid, start, end in self.pending:
            if end.query():
                self.note(eid, start.elapsed_time(end) / 1000.0)
            else:
                keep.append((eid, start, end))
        self.pending = keep
