"""What the pager did: its counters, its stats, and the trace recorder (no rendering: see report/).

The recorder is off unless a session asks for it, and then costs one list
append per event. Timestamps are host times at which the pager issued work
(on CUDA the copies themselves run later, on their streams); each operator
is a slice on the "operators" track, each transfer a slice on its stream's
track, and counters carry resident bytes by page kind and the budget.
The JSON follows the trace-event format that Perfetto (ui.perfetto.dev) and
chrome://tracing load.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import NamedTuple

import torch

from ..core.errors import fmt_bytes
from ..core.pages import Kind
from ..errors import BudgetOvershootError, unpageable_cause

log = logging.getLogger("deepum")

KIND_NAMES = [k.name.lower() for k in Kind]
TRACKS = {"operators": 1, "faults": 2, "prefetches": 3, "evictions": 4, "recomputes": 5}
_NO_RANGE = contextlib.nullcontext()


def now_us() -> float:
    return time.perf_counter_ns() / 1000.0


def profiler_range(name: str):
    """A torch.profiler range while a profiler records, so deepum's work shows in its trace."""
    if torch.autograd.profiler._is_profiler_enabled:
        return torch.profiler.record_function(name)
    return _NO_RANGE


class Stats:
    """Counters the pager keeps; :meth:`Telemetry.stats` turns them into a dict."""

    __slots__ = (
        "faults", "evictions", "writebacks", "dropped_clean", "bytes_to_device",
        "bytes_to_host", "prefetches", "prefetch_hits", "late_prefetches",
        "wasted_prefetches", "oom_retries", "leaving_waits", "overshoots", "ops", "dead_pages",
        "unpageable_pages", "rehomed_states", "dormant_ooms", "chunked_ops", "optimizer_steps", "comm_holds", "drops",
        "recomputes", "bytes_dropped", "lineage_released", "overshoot_max_bytes",
        "max_working_set_bytes", "plans", "planned_steps", "plan_departures", "planned_evictions",
        "plan_over_ops", "plan_short_evictions", "paging_starts", "paging_stops", "victim_choices",
        "views", "recipes", "plan_prefetch_no_room", "regions", "regions_selective", "region_calls",
        "region_recomputes", "parked_bytes", "region_input_bytes",
    )

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)


class Progress(NamedTuple):
    """What a live display reads while a session runs (cheap: no harvest, no dict)."""

    ops: int
    faults: int
    bytes_to_device: int
    bytes_to_host: int
    stall_seconds: float
    resident_bytes: int
    budget_bytes: int


class TraceRecorder:
    def __init__(self, budget: int, limit: int) -> None:
        self.budget = budget
        self.limit = limit
        self.t0 = now_us()
        # (ts, dur, track, name, args)
        self.slices: list[tuple[float, float, str, str, dict]] = []
        # (ts, resident bytes by kind)
        self.counters: list[tuple[float, tuple[int, ...]]] = []
        self.marks: list[tuple[float, str]] = []  # fault / prefetch instants for the picture
        self.steps: list[float] = []  # when each optimizer step ended
        self.step_paging: list[str] = []  # how each of those steps paged (StepPlans.paged_as)

    def op(self, name: str, eid: int, start: float, end: float) -> None:
        self.slices.append((start, end - start, "operators", name, {"eid": eid}))

    def transfer(self, track: str, start: float, end: float, pages: list, name: str = "", **args) -> None:
        """A slice on ``track`` for ``pages`` (its name: ``name``, else the track's and a count);
        ``args``: more for its details (the plan's part in it, drops and copies)."""
        nbytes = sum(p.nbytes for p in pages)
        kinds = sorted({KIND_NAMES[p.kind] for p in pages})
        self.slices.append((start, end - start, track, name or f"{track[:-1]} {len(pages)}",
                            {"pages": len(pages), "bytes": nbytes, "kinds": kinds, **args}))
        if track in ("faults", "prefetches"):
            self.marks.append((start, track))

    def counter(self, ts: float, kind_bytes: list[int]) -> None:
        self.counters.append((ts, tuple(kind_bytes)))

    def step(self, ts: float, paging: str = "online") -> None:
        """An optimizer step ended (the session's step hook); ``paging``: how it paged."""
        self.steps.append(ts)
        self.step_paging.append(paging)


# A page kind's name by its value (an enum's .name is a Python property: one call per page copied).
_KIND_NAMES = [k.name.lower() for k in sorted(Kind)]


class Telemetry:
    """The part of :class:`~deepum.engine.pager.Pager` that reports what it did."""

    def progress(self) -> Progress:
        """The running totals a status line or a benchmark samples."""
        c = self.counters
        return Progress(c.ops, c.faults, c.bytes_to_device, c.bytes_to_host,
                        self.transfers.stall_seconds, self.table.resident_bytes, self.budget)

    def _overshoot(self, op: str, over: int) -> None:
        """An operator's outputs passed the limit: count it, make room, and raise under strict."""
        self._count_overshoot(op, over, make_room=True)

    def _count_overshoot(self, op: str, over: int, make_room: bool = False) -> None:
        """The limit was passed by ``over`` bytes: count it (``make_room``: and make room), and
        raise under strict."""
        st = self.counters
        st.overshoots += 1
        st.overshoot_max_bytes = max(st.overshoot_max_bytes, over)
        if make_room:
            self.make_room(over)
        # Memory that cannot be paged out, a quarter of the limit or more, is
        # the likelier cause than an output larger than its estimate.
        unpageable = self.table.unpageable_bytes if self.table.unpageable_bytes * 4 >= self.table.limit else 0
        if self.strict:
            raise BudgetOvershootError(op, over, self.budget, unpageable)
        if unpageable and not self.unpageable_warned:
            self.unpageable_warned = True
            log.warning("deepum: operator %s passed the budget of %s by %s, with %s. Copy those tensors "
                        "inside the session (.clone()) or let go of them (a loaded checkpoint once its "
                        "state dicts are loaded), or raise the budget. Overshoots are counted in the stats.",
                        op, fmt_bytes(self.budget), fmt_bytes(over), unpageable_cause(unpageable))

    def _trace_evictions(self, t0: float, pages: list, dropped: int, copied: int) -> None:
        """An eviction batch on the trace: how many were dropped and copied, and whether a plan chose them."""
        self.trace.transfer("evictions", t0, now_us(), pages, f"evictions: {dropped} dropped, {copied} copied",
                            dropped=dropped, copied=copied, planned=self.plans.steering)

    def _note_writebacks(self, items: list) -> None:
        """Why each page went over the link: what it holds, or a recipe refused."""
        bytes_ = self.writeback_bytes
        for _, p in items:
            why = "recipe too deep" if p.recipe is not None else _KIND_NAMES[p.kind]
            bytes_[why] = bytes_.get(why, 0) + p.nbytes

    def _pages_by_kind(self) -> dict[str, int]:
        counts = dict.fromkeys(_KIND_NAMES, 0)
        for page in self.table.pages.values():
            counts[_KIND_NAMES[page.kind]] += 1
        return counts

    def stats(self) -> dict:
        self.transfers.harvest()
        st = self.counters
        out = {name: getattr(st, name) for name in Stats.__slots__}
        if self.energy is not None:
            out["energy_joules"] = self.energy.joules(self.config.thresholds.energy_read_s)
            if st.optimizer_steps:
                out["energy_joules_per_step"] = out["energy_joules"] / st.optimizer_steps
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_reserved(self.device)
        else:
            peak = self.table.peak_resident_bytes
        out.update(
            peak_device_bytes=peak,
            peak_managed_bytes=self.table.peak_resident_bytes,
            resident_bytes=self.table.resident_bytes,
            budget_bytes=self.budget,
            limit_bytes=self.table.limit,
            managed_pages=len(self.table),
            unpageable_bytes=self.table.unpageable_bytes,
            host_bytes=self.transfers.pool.held_bytes,
            peak_host_bytes=self.transfers.pool.peak_held_bytes,
            stall_seconds=self.transfers.stall_seconds,
            recompute_seconds=self.transfers.recompute_seconds,
            writeback_bytes_by_reason=dict(self.writeback_bytes),
            resident_bytes_by_kind={k.name.lower(): self.table.kind_bytes[k] for k in Kind},
            pages_by_kind=self._pages_by_kind(),
            max_working_set_op=self.max_working_set_op,
            policy=self.policy.name,
            prediction_accuracy=self.policy.accuracy,
            plan_seconds=self.plans.plan_seconds,
            plan_verdict=self.plans.trial.code if self.plans.trial is not None else -1,
            plan_trial_ms=self.plans.trial.ms() if self.plans.trial is not None else {},
        )
        return out
