"""Device time of operators, sampled: what the recompute planner charges for a rebuild.

The first few runs of each execution ID are timed with CUDA events on the
compute stream; later runs are not, so the cost per operator stays one dict
look-up once every ID has its samples. Events are read only once they have
completed, so timing never waits for the device. The cpu tier is not timed:
its operators would be priced at CPU speed against a memcpy "link", and CI
is meant to take the decisions a GPU would, so there the costs fall back to
the bytes an operator makes (core/costs.py, [Note: fallback cost]).

[Note: gated timing]
A pair of events brackets what the stream ran between them, and when the
host is the slower side (as it is in a paged step) the stream is idle when
it reaches the start event: it then waits there for the host to launch the
operator, and the sample is the host's launch time, not the kernel's. The
planner would price rebuilds at host speed and believe the link has as much
time to hide copies as the host takes. So a sampled operator is preceded on
its stream by a short sleep kernel (``torch.cuda._sleep``, Thresholds.timing_gate_s):
the host records the start event and launches the operator while the
stream sleeps, and the stream then runs start, kernels and end back to back.
The sleep costs its length once per sample, in the first runs of each ID
only. A launch that takes longer than the gate (an allocator retry) is
still counted in; the median of the samples (core/costs.py) keeps such
outliers out.
"""

from __future__ import annotations

import torch

SAMPLES = 3  # runs timed per execution ID


CALIBRATION_CYCLES = 2_000_000  # a sleep long enough to time the clock by (about a millisecond)


class OpTimer:
    def __init__(self, device: torch.device, note, gate_s: float = 0.0) -> None:
        """``note(eid, seconds)`` receives each sample (Costs.note_time); ``gate_s``: seconds
        of sleep before each sampled operator ([Note: gated timing]), 0 for none."""
        self.cuda = device.type == "cuda"
        self.note = note
        self.taken: dict[int, int] = {}
        self.pending: list[tuple[int, object, object]] = []
        self.gate_s = gate_s
        self.gate_cycles: int | None = None  # known at the first sample

    def _gate(self) -> None:
        cycles = self.gate_cycles
        if cycles is None:
            # The sleep kernel counts clock cycles: time one sleep to convert.
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            torch.cuda._sleep(CALIBRATION_CYCLES)
            b.record()
            b.synchronize()
            per_s = CALIBRATION_CYCLES / max(a.elapsed_time(b) / 1000.0, 1e-9)
            cycles = self.gate_cycles = int(self.gate_s * per_s)
        if cycles > 0:
            torch.cuda._sleep(cycles)

    def start(self, eid: int):
        """A token to pass to stop(), or None when this ID has its samples (or nothing is timed)."""
        if not self.cuda:
            return None
        n = self.taken.get(eid, 0)
        if n >= SAMPLES:
            return None
        self.taken[eid] = n + 1
        if self.gate_s > 0:
            self._gate()
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
